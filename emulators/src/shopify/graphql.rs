//! GraphQL documents as the Shopify emulator needs them: parsed with
//! `graphql-parser`, variables substituted, fragments inlined, and turned into a
//! small owned tree of selected fields with JSON arguments. Resolvers then build
//! the response by walking that tree (CHANNELS.md A: the Admin GraphQL API).

use std::collections::HashMap;

use graphql_parser::query::{
    parse_query, Definition, Document, FragmentDefinition, OperationDefinition, Selection,
    SelectionSet, Type,
};
use serde_json::{json, Map, Value};

/// Fragments nested deeper than this are refused (a cycle would never end).
const MAX_FRAGMENT_DEPTH: usize = 16;
/// Fields after fragments are inlined; fragments that repeat each other could
/// otherwise multiply a small document into an enormous one.
const MAX_SELECTED_FIELDS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationKind {
    Query,
    Mutation,
}

/// One selected field, arguments resolved to JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SelectedField {
    /// The alias if given, else the name: the key in the response.
    pub response_key: String,
    pub name: String,
    pub arguments: Map<String, Value>,
    /// Directives on the field with their resolved arguments (`@idempotent`).
    pub directives: Vec<(String, Map<String, Value>)>,
    pub children: Vec<SelectedField>,
    pub line: usize,
    pub column: usize,
}

impl SelectedField {
    pub fn directive(&self, name: &str) -> Option<&Map<String, Value>> {
        self.directives
            .iter()
            .find(|(directive, _)| directive == name)
            .map(|(_, arguments)| arguments)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Operation {
    pub kind: OperationKind,
    pub fields: Vec<SelectedField>,
}

/// A top-level GraphQL error, in the shape Shopify answers with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphqlError(pub Value);

impl GraphqlError {
    pub fn new(message: impl Into<String>, code: &str) -> Self {
        Self(json!({"message": message.into(), "extensions": {"code": code}}))
    }

    pub fn at(message: impl Into<String>, field: &SelectedField, code: &str) -> Self {
        Self(json!({
            "message": message.into(),
            "locations": [{"line": field.line, "column": field.column}],
            "extensions": {"code": code},
        }))
    }

    pub fn undefined_field(type_name: &str, field: &SelectedField) -> Self {
        Self(json!({
            "message": format!("Field '{}' doesn't exist on type '{type_name}'", field.name),
            "locations": [{"line": field.line, "column": field.column}],
            "extensions": {"code": "undefinedField", "typeName": type_name, "fieldName": field.name},
        }))
    }

    pub fn missing_argument(field: &SelectedField, argument: &str) -> Self {
        Self(json!({
            "message": format!("Field '{}' is missing required arguments: {argument}", field.name),
            "locations": [{"line": field.line, "column": field.column}],
            "extensions": {"code": "missingRequiredArguments", "className": "Field", "name": field.name, "arguments": argument},
        }))
    }
}

/// Parses `query`, picks the operation (`operation_name` or the only one) and
/// resolves its variables.
pub(crate) fn parse_operation(
    query: &str,
    variables: &Map<String, Value>,
    operation_name: Option<&str>,
) -> Result<Operation, GraphqlError> {
    let document: Document<'_, String> = parse_query(query)
        .map_err(|error| GraphqlError(json!({"message": error.to_string().trim().to_owned()})))?;
    let mut fragments = HashMap::new();
    let mut operations = Vec::new();
    for definition in &document.definitions {
        match definition {
            Definition::Fragment(fragment) => {
                fragments.insert(fragment.name.clone(), fragment);
            }
            Definition::Operation(operation) => operations.push(operation),
        }
    }
    let operation = match operation_name {
        Some(wanted) => operations
            .iter()
            .find(|operation| operation_name_of(operation) == Some(wanted))
            .ok_or_else(|| {
                GraphqlError::new(
                    format!("No operation named \"{wanted}\""),
                    "OPERATION_NOT_FOUND",
                )
            })?,
        None if operations.len() == 1 => &operations[0],
        None => {
            return Err(GraphqlError::new(
                "An operation name is required when the document holds several operations",
                "OPERATION_NAME_REQUIRED",
            ))
        }
    };
    let (kind, definitions, selection_set) = match operation {
        OperationDefinition::SelectionSet(set) => (OperationKind::Query, &[][..], set),
        OperationDefinition::Query(query) => (
            OperationKind::Query,
            &query.variable_definitions[..],
            &query.selection_set,
        ),
        OperationDefinition::Mutation(mutation) => (
            OperationKind::Mutation,
            &mutation.variable_definitions[..],
            &mutation.selection_set,
        ),
        OperationDefinition::Subscription(_) => {
            return Err(GraphqlError::new(
                "Subscriptions are not supported",
                "UNSUPPORTED_OPERATION",
            ))
        }
    };
    let mut bound = Map::new();
    for definition in definitions {
        let value = variables.get(&definition.name).cloned().or_else(|| {
            definition
                .default_value
                .as_ref()
                .map(|v| to_json(v, &Map::new()))
        });
        match value {
            Some(value) if !(value.is_null() && is_non_null(&definition.var_type)) => {
                bound.insert(definition.name.clone(), value);
            }
            _ if is_non_null(&definition.var_type) => {
                return Err(GraphqlError(json!({
                    "message": format!(
                        "Variable ${} of type {} was provided invalid value",
                        definition.name, definition.var_type
                    ),
                    "extensions": {"code": "INVALID_VARIABLE", "value": null,
                        "problems": [{"path": [], "explanation": "Expected value to not be null"}]},
                })));
            }
            _ => {
                bound.insert(definition.name.clone(), Value::Null);
            }
        }
    }
    let resolver = Resolver {
        variables: &bound,
        fragments: &fragments,
        selected: std::cell::Cell::new(0),
    };
    Ok(Operation {
        kind,
        fields: resolver.selection(selection_set, 0)?,
    })
}

fn operation_name_of<'a>(operation: &'a OperationDefinition<'a, String>) -> Option<&'a str> {
    match operation {
        OperationDefinition::SelectionSet(_) => None,
        OperationDefinition::Query(query) => query.name.as_deref(),
        OperationDefinition::Mutation(mutation) => mutation.name.as_deref(),
        OperationDefinition::Subscription(subscription) => subscription.name.as_deref(),
    }
}

fn is_non_null(var_type: &Type<'_, String>) -> bool {
    matches!(var_type, Type::NonNullType(_))
}

struct Resolver<'d, 'a> {
    variables: &'d Map<String, Value>,
    fragments: &'d HashMap<String, &'d FragmentDefinition<'a, String>>,
    selected: std::cell::Cell<usize>,
}

impl Resolver<'_, '_> {
    fn field(
        &self,
        field: &graphql_parser::query::Field<'_, String>,
        depth: usize,
    ) -> Result<SelectedField, GraphqlError> {
        self.selected.set(self.selected.get() + 1);
        if self.selected.get() > MAX_SELECTED_FIELDS {
            return Err(GraphqlError::new(
                "The document selects too many fields",
                "MAX_FIELDS_EXCEEDED",
            ));
        }
        Ok(SelectedField {
            response_key: field.alias.clone().unwrap_or_else(|| field.name.clone()),
            name: field.name.clone(),
            arguments: field
                .arguments
                .iter()
                .map(|(name, value)| (name.clone(), to_json(value, self.variables)))
                .collect(),
            directives: field
                .directives
                .iter()
                .map(|directive| {
                    let arguments = directive
                        .arguments
                        .iter()
                        .map(|(name, value)| (name.clone(), to_json(value, self.variables)))
                        .collect();
                    (directive.name.clone(), arguments)
                })
                .collect(),
            children: self.selection(&field.selection_set, depth)?,
            line: field.position.line,
            column: field.position.column,
        })
    }
    fn selection(
        &self,
        set: &SelectionSet<'_, String>,
        depth: usize,
    ) -> Result<Vec<SelectedField>, GraphqlError> {
        if depth > MAX_FRAGMENT_DEPTH {
            return Err(GraphqlError::new(
                "Fragments nest too deeply",
                "FRAGMENT_TOO_DEEP",
            ));
        }
        let mut fields = Vec::new();
        for item in &set.items {
            match item {
                Selection::Field(field) => fields.push(self.field(field, depth)?),
                Selection::InlineFragment(fragment) => {
                    fields.extend(self.selection(&fragment.selection_set, depth + 1)?)
                }
                Selection::FragmentSpread(spread) => {
                    let fragment = self.fragments.get(&spread.fragment_name).ok_or_else(|| {
                        GraphqlError::new(
                            format!(
                                "Fragment {} was used, but not defined",
                                spread.fragment_name
                            ),
                            "useAndDefineFragment",
                        )
                    })?;
                    fields.extend(self.selection(&fragment.selection_set, depth + 1)?)
                }
            }
        }
        Ok(fields)
    }
}

fn to_json(
    value: &graphql_parser::query::Value<'_, String>,
    variables: &Map<String, Value>,
) -> Value {
    use graphql_parser::query::Value as Gql;
    match value {
        Gql::Variable(name) => variables.get(name).cloned().unwrap_or(Value::Null),
        Gql::Int(number) => number.as_i64().map(Value::from).unwrap_or(Value::Null),
        Gql::Float(float) => json!(float),
        Gql::String(text) => Value::String(text.clone()),
        Gql::Boolean(flag) => Value::Bool(*flag),
        Gql::Null => Value::Null,
        Gql::Enum(name) => Value::String(name.clone()),
        Gql::List(items) => {
            Value::Array(items.iter().map(|item| to_json(item, variables)).collect())
        }
        Gql::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), to_json(value, variables)))
                .collect(),
        ),
    }
}

/// Shopify's static cost (A.4): 10 per mutation; for a query, 1 per selected
/// object field (scalars cost 0). The emulator does not size connections by
/// `first`/`last` because the inventory read-back has none.
pub(crate) fn requested_cost(operation: &Operation) -> u64 {
    fn object_fields(fields: &[SelectedField]) -> u64 {
        fields
            .iter()
            .filter(|field| !field.children.is_empty())
            .map(|field| 1 + object_fields(&field.children))
            .sum()
    }
    match operation.kind {
        OperationKind::Mutation => 10 * operation.fields.len() as u64,
        OperationKind::Query => object_fields(&operation.fields).max(1),
    }
}

/// Builds the response for a plain JSON object: each selected field is taken
/// from `value` by name and shaped by its own selection. Objects carry their
/// `__typename` so an unknown field gets Shopify's `undefinedField` error.
pub(crate) fn project(value: &Value, fields: &[SelectedField]) -> Result<Value, GraphqlError> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| project(item, fields))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(object) if !fields.is_empty() => {
            let type_name = object
                .get("__typename")
                .and_then(Value::as_str)
                .unwrap_or("Object");
            let mut out = Map::new();
            for field in fields {
                let Some(member) = object.get(&field.name) else {
                    return Err(GraphqlError::undefined_field(type_name, field));
                };
                out.insert(
                    field.response_key.clone(),
                    project(member, &field.children)?,
                );
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn variables_fragments_aliases_and_directives_resolve() {
        let query = r#"
            mutation Push($input: InventorySetQuantitiesInput!, $key: String!) {
              pushed: inventorySetQuantities(input: $input) @idempotent(key: $key) { ...Payload }
            }
            fragment Payload on InventorySetQuantitiesPayload { userErrors { code field } }
        "#;
        let variables = json!({"input": {"name": "available"}, "key": "k-1"});
        let operation = parse_operation(query, variables.as_object().unwrap(), None).unwrap();
        assert_eq!(operation.kind, OperationKind::Mutation);
        let field = &operation.fields[0];
        assert_eq!(field.response_key, "pushed");
        assert_eq!(field.name, "inventorySetQuantities");
        assert_eq!(field.arguments["input"]["name"], "available");
        assert_eq!(field.directive("idempotent").unwrap()["key"], "k-1");
        assert_eq!(field.children[0].name, "userErrors");
        assert_eq!(requested_cost(&operation), 10);
    }

    #[test]
    fn a_missing_non_null_variable_and_bad_syntax_are_errors() {
        let missing = parse_operation(
            "mutation($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: $input) { userErrors { code } } }",
            &Map::new(),
            None,
        )
        .unwrap_err();
        assert_eq!(missing.0["extensions"]["code"], "INVALID_VARIABLE");
        assert!(parse_operation("mutation {", &Map::new(), None).is_err());
    }

    #[test]
    fn fragments_that_multiply_are_refused() {
        let mut document = String::from("{ ...F5 }\nfragment F0 on QueryRoot { a }\n");
        for level in 1..=5 {
            let spreads = format!(" ...F{}", level - 1).repeat(10);
            document.push_str(&format!("fragment F{level} on QueryRoot {{{spreads} }}\n"));
        }
        let error = parse_operation(&document, &Map::new(), None).unwrap_err();
        assert_eq!(error.0["extensions"]["code"], "MAX_FIELDS_EXCEEDED");
    }

    #[test]
    fn projection_refuses_unknown_fields() {
        let operation = parse_operation("{ a { b nope } }", &Map::new(), None).unwrap();
        let value = json!({"__typename": "A", "b": 1});
        let error = project(&value, &operation.fields[0].children).unwrap_err();
        assert_eq!(error.0["extensions"]["code"], "undefinedField");
        assert_eq!(requested_cost(&operation), 1);
    }
}
