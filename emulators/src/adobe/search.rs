//! `searchCriteria` for `GET /V1/inventory/source-items` (CHANNELS.md D.1):
//! `searchCriteria[filter_groups][G][filters][F][field|value|condition_type]`,
//! filters within a group OR-ed, groups AND-ed (Magento's rule), plus
//! `pageSize` and `currentPage`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::SourceItem;

#[derive(Debug, Clone, Default)]
struct Filter {
    field: String,
    value: String,
    condition: String,
}

#[derive(Debug, Default)]
pub(super) struct SearchCriteria {
    groups: BTreeMap<usize, BTreeMap<usize, Filter>>,
    page_size: Option<usize>,
    current_page: Option<usize>,
}

/// `searchCriteria[a][0][b]` -> `["a", "0", "b"]`.
fn key_parts(key: &str) -> Option<Vec<&str>> {
    let rest = key.strip_prefix("searchCriteria")?;
    let mut parts = Vec::new();
    for piece in rest.split('[').skip(1) {
        parts.push(piece.strip_suffix(']')?);
    }
    Some(parts)
}

impl SearchCriteria {
    pub fn parse(query: &str) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|_| "The search criteria could not be read.".to_owned())?;
        let mut criteria = Self::default();
        for (key, value) in &pairs {
            let Some(parts) = key_parts(key) else {
                continue;
            };
            match parts.as_slice() {
                ["filter_groups", group, "filters", filter, attribute] => {
                    let (Ok(group), Ok(filter)) = (group.parse(), filter.parse()) else {
                        return Err(format!("\"{key}\" is not a valid search criteria key."));
                    };
                    let entry = criteria
                        .groups
                        .entry(group)
                        .or_default()
                        .entry(filter)
                        .or_default();
                    match *attribute {
                        "field" => entry.field = value.clone(),
                        "value" => entry.value = value.clone(),
                        "condition_type" => entry.condition = value.clone(),
                        _ => return Err(format!("\"{attribute}\" is not a filter attribute.")),
                    }
                }
                ["pageSize"] => criteria.page_size = value.parse().ok().filter(|size| *size > 0),
                ["currentPage"] => {
                    criteria.current_page = value.parse().ok().filter(|page| *page > 0)
                }
                ["sortOrders", ..] => {}
                _ => return Err(format!("\"{key}\" is not a valid search criteria key.")),
            }
        }
        for filter in criteria.groups.values().flat_map(BTreeMap::values) {
            if !matches!(
                filter.field.as_str(),
                "sku" | "source_code" | "status" | "quantity"
            ) {
                return Err(format!(
                    "Invalid value of \"{}\" provided for the field field.",
                    filter.field
                ));
            }
            if !matches!(
                filter.condition.as_str(),
                "" | "eq" | "neq" | "in" | "nin" | "like" | "gt" | "lt" | "gteq" | "lteq"
            ) {
                return Err(format!(
                    "Invalid value of \"{}\" provided for the condition_type field.",
                    filter.condition
                ));
            }
        }
        Ok(criteria)
    }

    pub fn matches(&self, item: &SourceItem) -> bool {
        self.groups
            .values()
            .all(|filters| filters.values().any(|filter| filter_matches(filter, item)))
    }

    pub fn page<'a>(&self, items: &[&'a SourceItem]) -> Vec<&'a SourceItem> {
        match self.page_size {
            Some(size) => {
                let page = self.current_page.unwrap_or(1);
                items
                    .iter()
                    .skip((page - 1).saturating_mul(size))
                    .take(size)
                    .copied()
                    .collect()
            }
            None => items.to_vec(),
        }
    }

    /// The criteria as Magento echoes them in `search_criteria`.
    pub fn echo(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .values()
            .map(|filters| {
                let filters: Vec<Value> = filters
                    .values()
                    .map(|filter| {
                        json!({"field": filter.field, "value": filter.value,
                            "condition_type": if filter.condition.is_empty() { "eq" } else { &filter.condition }})
                    })
                    .collect();
                json!({"filters": filters})
            })
            .collect();
        let mut echo = json!({"filter_groups": groups});
        if let Some(size) = self.page_size {
            echo["page_size"] = json!(size);
        }
        if let Some(page) = self.current_page {
            echo["current_page"] = json!(page);
        }
        echo
    }
}

fn filter_matches(filter: &Filter, item: &SourceItem) -> bool {
    let text = match filter.field.as_str() {
        "sku" => item.sku.clone(),
        "source_code" => item.source_code.clone(),
        "status" => item.status.to_string(),
        _ => super::number(item.quantity).to_string(),
    };
    let numeric =
        || -> Option<(f64, f64)> { Some((text.parse().ok()?, filter.value.parse().ok()?)) };
    match filter.condition.as_str() {
        "" | "eq" => text == filter.value,
        "neq" => text != filter.value,
        "in" => filter.value.split(',').any(|value| value.trim() == text),
        "nin" => !filter.value.split(',').any(|value| value.trim() == text),
        "like" => like(&text, &filter.value),
        "gt" => numeric().is_some_and(|(a, b)| a > b),
        "lt" => numeric().is_some_and(|(a, b)| a < b),
        "gteq" => numeric().is_some_and(|(a, b)| a >= b),
        "lteq" => numeric().is_some_and(|(a, b)| a <= b),
        _ => false,
    }
}

/// SQL `LIKE` with `%` wildcards, case-insensitive as MySQL's default collation.
fn like(text: &str, pattern: &str) -> bool {
    let text = text.to_lowercase();
    let pattern = pattern.to_lowercase();
    let pieces: Vec<&str> = pattern.split('%').collect();
    let mut rest = text.as_str();
    for (index, piece) in pieces.iter().enumerate() {
        if index == 0 {
            let Some(after) = rest.strip_prefix(piece) else {
                return false;
            };
            rest = after;
        } else if index == pieces.len() - 1 {
            return piece.is_empty() || rest.ends_with(piece);
        } else if let Some(at) = rest.find(piece) {
            rest = &rest[at + piece.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(sku: &str, source: &str) -> SourceItem {
        SourceItem {
            sku: sku.to_owned(),
            source_code: source.to_owned(),
            quantity: 5.0,
            status: 1,
        }
    }

    #[test]
    fn groups_and_filters_combine_like_magento() {
        let query = "searchCriteria%5Bfilter_groups%5D%5B0%5D%5Bfilters%5D%5B0%5D%5Bfield%5D=sku\
            &searchCriteria%5Bfilter_groups%5D%5B0%5D%5Bfilters%5D%5B0%5D%5Bvalue%5D=A,B\
            &searchCriteria%5Bfilter_groups%5D%5B0%5D%5Bfilters%5D%5B0%5D%5Bcondition_type%5D=in\
            &searchCriteria[filter_groups][1][filters][0][field]=source_code\
            &searchCriteria[filter_groups][1][filters][0][value]=east";
        let criteria = SearchCriteria::parse(query).unwrap();
        assert!(criteria.matches(&item("A", "east")));
        assert!(!criteria.matches(&item("A", "west")));
        assert!(!criteria.matches(&item("C", "east")));
        assert!(
            SearchCriteria::parse("searchCriteria[filter_groups][0][filters][0][field]=price")
                .is_err()
        );
    }

    #[test]
    fn like_handles_wildcards() {
        assert!(like("24-WB01", "24-%"));
        assert!(like("24-WB01", "%wb%"));
        assert!(!like("24-WB01", "25-%"));
        assert!(like("abc", "abc"));
    }
}
