//! `skuld import positions FILE`: a bulk load of physical counts (CSV or
//! JSON Lines) over `InventoryService.ImportPositions`.
//!
//! Each line is checked here first, so a bad line is named with its
//! precise reason without a round trip; the good ones are streamed in
//! messages of [`LINES_PER_MESSAGE`], read from the file only as fast as
//! the node applies them. A line's idempotency key is a hash of what it
//! says (tenant, sku, location, count, count time, reason), not of where it
//! is: importing a file again, or another file holding some of the same
//! lines in any order, replays those lines and changes nothing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use skuld_proto::v1 as pb;
use skuld_proto::v1::inventory_service_client::InventoryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{emit, fail, format_status, print_json, CallContext, ReasonArg};

/// Lines per request message (the server takes up to 1000).
const LINES_PER_MESSAGE: usize = 500;
/// Request messages read ahead of the node.
const MESSAGES_AHEAD: usize = 2;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Load physical counts: each line sets a position's on_hand, as
    /// `set-on-hand` would, once (rerunning the import changes nothing).
    Positions(PositionsArgs),
}

#[derive(Args, Debug)]
pub struct PositionsArgs {
    /// CSV with a header row naming at least sku, location and on_hand
    /// (optional: counted_at_unix_ms; other columns are ignored), or JSON
    /// Lines with the same fields.
    pub file: PathBuf,
    /// The file's format; by default jsonl for .jsonl and .ndjson files,
    /// csv otherwise.
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Where to write the lines not applied (CSV: line,reason,text);
    /// by default FILE.rejects.csv, written only when there are some.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Tenant of every position of the file.
    #[arg(long, env = "SKULD_TENANT", default_value = "default")]
    pub tenant: String,
    /// Why the quantities change (recorded in the ledger).
    #[arg(long, value_enum, default_value_t = ReasonArg::CycleCount)]
    pub reason: ReasonArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Jsonl,
}

pub(super) async fn run(
    ctx: &CallContext,
    channel: Channel,
    command: ImportCommand,
) -> anyhow::Result<()> {
    match command {
        ImportCommand::Positions(args) => import_positions(ctx, channel, args).await,
    }
}

/// A line that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reject {
    line_number: u64,
    reason: String,
    text: String,
}

/// What the file reader and the reply reader share.
#[derive(Default)]
struct Shared {
    /// Lines read (not counting a CSV header or blank lines).
    lines_read: AtomicU64,
    bytes_read: AtomicU64,
    rejects: Mutex<Vec<Reject>>,
    /// The text of lines sent and not answered yet, by line number: what a
    /// server-side refusal is reported with.
    unanswered: Mutex<HashMap<u64, String>>,
}

impl Shared {
    fn reject(&self, line_number: u64, reason: String, text: String) {
        if let Ok(mut rejects) = self.rejects.lock() {
            rejects.push(Reject {
                line_number,
                reason,
                text,
            });
        }
    }

    fn answered(&self, line_number: u64) -> String {
        self.unanswered
            .lock()
            .ok()
            .and_then(|mut unanswered| unanswered.remove(&line_number))
            .unwrap_or_default()
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    file: String,
    lines_read: u64,
    applied: u64,
    replayed: u64,
    rejected: u64,
    rejects_file: Option<String>,
    elapsed_ms: u64,
    lines_per_second: u64,
}

async fn import_positions(
    ctx: &CallContext,
    channel: Channel,
    args: PositionsArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let file = File::open(&args.file)
        .map_err(|e| fail(format!("cannot read {}: {e}", args.file.display())))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let format = args.format.unwrap_or_else(|| format_of(&args.file));
    let mut reader = BufReader::new(file);
    let columns = match format {
        ImportFormat::Csv => Some(read_header(&mut reader, &args.file)?),
        ImportFormat::Jsonl => None,
    };
    let shared = Arc::new(Shared::default());
    let parser = LineParser {
        tenant: args.tenant.clone(),
        reason: pb::AdjustmentReason::from(args.reason),
        columns,
    };
    let (messages, outbound) = mpsc::channel(MESSAGES_AHEAD);
    let reading = {
        let shared = Arc::clone(&shared);
        let first_line = if format == ImportFormat::Csv { 2 } else { 1 };
        tokio::task::spawn_blocking(move || {
            read_lines(reader, first_line, &parser, &shared, &messages)
        })
    };

    let mut client = InventoryServiceClient::new(channel);
    let request = ctx.request(ReceiverStream::new(outbound));
    let progress = Progress::new(ctx.json, total_bytes);
    let mut summary = Summary {
        file: args.file.display().to_string(),
        ..Summary::default()
    };
    let failure = match client.import_positions(request).await {
        Err(status) => Some(status),
        Ok(replies) => {
            let mut replies = replies.into_inner();
            loop {
                let reply = tokio::time::timeout(ctx.timeout, replies.message()).await;
                match reply {
                    Ok(Ok(Some(reply))) => {
                        tally(&reply, &shared, &mut summary);
                        progress.show(&shared, &summary, started);
                    }
                    Ok(Ok(None)) => break None,
                    Ok(Err(status)) => break Some(status),
                    Err(_elapsed) => {
                        break Some(tonic::Status::deadline_exceeded(format!(
                            "no reply within {} ms",
                            ctx.timeout.as_millis()
                        )))
                    }
                }
            }
        }
    };
    progress.clear();
    let read = reading
        .await
        .map_err(|e| fail(format!("reading {} failed: {e}", args.file.display())))?;
    if let Err(error) = read {
        return Err(fail(format!(
            "cannot read {}: {error}",
            args.file.display()
        )));
    }
    if let Some(status) = &failure {
        // Lines sent and never answered may or may not have been applied:
        // rerunning the import settles them (their keys make it safe).
        let reason = format!(
            "not answered, the import stopped: {}; rerun the import",
            format_status(status, None)
        );
        let unanswered: Vec<(u64, String)> = shared
            .unanswered
            .lock()
            .map(|mut unanswered| unanswered.drain().collect())
            .unwrap_or_default();
        for (line_number, text) in unanswered {
            shared.reject(line_number, reason.clone(), text);
        }
    }

    let mut rejects = shared
        .rejects
        .lock()
        .map(|rejects| rejects.clone())
        .unwrap_or_default();
    rejects.sort_by_key(|reject| reject.line_number);
    summary.lines_read = shared.lines_read.load(Ordering::Relaxed);
    summary.rejected = rejects.len() as u64;
    let rejects_path = match (&args.rejects, rejects.is_empty()) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(default_rejects_path(&args.file)),
        (None, true) => None,
    };
    if let Some(path) = &rejects_path {
        write_rejects(path, &rejects)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        summary.rejects_file = Some(path.display().to_string());
    }
    let elapsed = started.elapsed();
    summary.elapsed_ms = elapsed.as_millis() as u64;
    summary.lines_per_second =
        ((summary.applied + summary.replayed) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
    if ctx.json {
        print_json(&summary)?;
    } else {
        emit(&format_summary(&summary))?;
    }
    match failure {
        Some(status) => Err(fail(format!(
            "the import stopped: {}; rerun it to finish (applied lines replay)",
            format_status(&status, None)
        ))),
        None if summary.rejected > 0 => Err(fail(format!(
            "{} {} rejected; see {}",
            summary.rejected,
            if summary.rejected == 1 {
                "line"
            } else {
                "lines"
            },
            summary.rejects_file.as_deref().unwrap_or("-")
        ))),
        None => Ok(()),
    }
}

fn format_of(path: &Path) -> ImportFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => ImportFormat::Jsonl,
        _ => ImportFormat::Csv,
    }
}

fn default_rejects_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".rejects.csv");
    PathBuf::from(name)
}

fn tally(reply: &pb::ImportPositionsResponse, shared: &Shared, summary: &mut Summary) {
    for result in &reply.results {
        let text = shared.answered(result.line_number);
        match pb::ImportLineOutcome::try_from(result.outcome) {
            Ok(pb::ImportLineOutcome::Applied) => summary.applied += 1,
            Ok(pb::ImportLineOutcome::Replayed) => summary.replayed += 1,
            _ => {
                let code = tonic::Code::from_i32(result.code);
                shared.reject(
                    result.line_number,
                    format!("{}: {}", skuld_proto::code_name(code), result.message),
                    text,
                );
            }
        }
    }
}

/// Where each field of a CSV line is.
#[derive(Debug, Clone, Copy)]
struct Columns {
    sku: usize,
    location: usize,
    on_hand: usize,
    counted_at: Option<usize>,
}

fn read_header(reader: &mut impl BufRead, path: &Path) -> anyhow::Result<Columns> {
    let mut header = String::new();
    reader
        .read_line(&mut header)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let names: Vec<String> = split_csv(header.trim_end_matches(['\r', '\n']))
        .map_err(|reason| fail(format!("{}: line 1 (header): {reason}", path.display())))?
        .into_iter()
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    let required = |name: &str| {
        find(name).ok_or_else(|| {
            fail(format!(
                "{}: line 1 (header) has no {name} column (it needs sku, location and on_hand)",
                path.display()
            ))
        })
    };
    Ok(Columns {
        sku: required("sku")?,
        location: required("location")?,
        on_hand: required("on_hand")?,
        counted_at: find("counted_at_unix_ms"),
    })
}

/// Turns a line of the file into the line to send, or the reason it is bad.
struct LineParser {
    tenant: String,
    reason: pb::AdjustmentReason,
    /// CSV: the header's columns; JSON Lines: `None`.
    columns: Option<Columns>,
}

/// The fields of one line, before they are checked.
struct Fields {
    sku: String,
    location: String,
    on_hand: String,
    counted_at: Option<String>,
}

impl LineParser {
    fn parse(&self, line_number: u64, text: &str) -> Result<pb::ImportPositionLine, String> {
        let fields = match self.columns {
            Some(columns) => csv_fields(text, columns)?,
            None => json_fields(text)?,
        };
        skuld_actors::key::validate_token("sku", &fields.sku).map_err(|r| r.to_string())?;
        skuld_actors::key::validate_token("location", &fields.location)
            .map_err(|r| r.to_string())?;
        let on_hand = parse_integer("on_hand", &fields.on_hand)?;
        if on_hand < 0 {
            return Err(format!("on_hand: {on_hand} is negative; a count is >= 0"));
        }
        let counted_at = match fields.counted_at.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(text) => {
                let value = parse_integer("counted_at_unix_ms", text)?;
                if value < 0 {
                    return Err(format!("counted_at_unix_ms: {value} is negative"));
                }
                value
            }
        };
        let idempotency_key = line_key(
            &self.tenant,
            &fields.sku,
            &fields.location,
            on_hand,
            counted_at,
            self.reason,
        );
        Ok(pb::ImportPositionLine {
            line_number,
            sku: fields.sku,
            location: fields.location,
            on_hand,
            counted_at_unix_ms: counted_at,
            reason: self.reason.into(),
            idempotency_key,
        })
    }
}

/// `import:` and the SHA-256 of what the line says: the same count of the
/// same position is the same key wherever it stands in whichever file.
fn line_key(
    tenant: &str,
    sku: &str,
    location: &str,
    on_hand: i64,
    counted_at: i64,
    reason: pb::AdjustmentReason,
) -> String {
    let mut hash = Sha256::new();
    // Length-prefixed, so no two different lines hash the same bytes.
    for part in [tenant, sku, location] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(on_hand.to_be_bytes());
    hash.update(counted_at.to_be_bytes());
    hash.update((reason as i32).to_be_bytes());
    let digest = hash.finalize();
    let mut key = String::from("import:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

fn parse_integer(field: &str, text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{field}: missing"));
    }
    trimmed
        .parse::<i64>()
        .map_err(|e| format!("{field}: {trimmed:?} is not a whole number ({e})"))
}

fn csv_fields(text: &str, columns: Columns) -> Result<Fields, String> {
    let values = split_csv(text)?;
    let get = |index: usize, name: &str| {
        values
            .get(index)
            .cloned()
            .ok_or_else(|| format!("{name}: missing ({} fields on the line)", values.len()))
    };
    Ok(Fields {
        sku: get(columns.sku, "sku")?,
        location: get(columns.location, "location")?,
        on_hand: get(columns.on_hand, "on_hand")?,
        counted_at: columns
            .counted_at
            .and_then(|index| values.get(index).cloned()),
    })
}

/// RFC 4180 fields of one line: comma-separated, a field in double quotes
/// may hold commas and `""` for a quote.
fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => {
                quoted = true;
                at_start = false;
            }
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                match chars.peek() {
                    None | Some(',') => {}
                    Some(other) => {
                        return Err(format!("unexpected {other:?} after a closing quote"));
                    }
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (_, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

fn json_fields(text: &str) -> Result<Fields, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let text_of = |name: &str| -> Result<Option<String>, String> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            // An integer as a number, or as a string (proto3 JSON's int64).
            Some(serde_json::Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(format!("{name}: {other} is not a string or a number")),
        }
    };
    let required = |name: &str| text_of(name)?.ok_or_else(|| format!("{name}: missing"));
    Ok(Fields {
        sku: required("sku")?,
        location: required("location")?,
        on_hand: required("on_hand")?,
        counted_at: text_of("counted_at_unix_ms")?,
    })
}

/// Reads, checks and sends every line of the file (on a blocking thread);
/// bad lines go to the rejects. Blocks while the node is behind.
fn read_lines(
    mut reader: impl BufRead,
    first_line: u64,
    parser: &LineParser,
    shared: &Shared,
    messages: &mpsc::Sender<pb::ImportPositionsRequest>,
) -> io::Result<()> {
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut lines = Vec::with_capacity(LINES_PER_MESSAGE);
    let mut text = String::new();
    let mut line_number = first_line;
    let send = |lines: Vec<pb::ImportPositionLine>| {
        messages
            .blocking_send(pb::ImportPositionsRequest {
                tenant: parser.tenant.clone(),
                lines,
            })
            .is_ok()
    };
    loop {
        text.clear();
        let read = match reader.read_line(&mut text) {
            Ok(read) => read,
            // A line that is not UTF-8 is a bad line, not a bad file.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let mut raw = Vec::new();
                reader.read_until(b'\n', &mut raw)?;
                shared.lines_read.fetch_add(1, Ordering::Relaxed);
                shared.reject(
                    line_number,
                    "not UTF-8 text".into(),
                    String::from_utf8_lossy(&raw).trim_end().to_owned(),
                );
                line_number += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if read == 0 {
            break;
        }
        shared.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        let line = text.trim_end_matches(['\r', '\n']);
        if !line.trim().is_empty() {
            shared.lines_read.fetch_add(1, Ordering::Relaxed);
            match parser.parse(line_number, line) {
                Err(reason) => shared.reject(line_number, reason, line.to_owned()),
                Ok(parsed) => {
                    let position = (parsed.sku.clone(), parsed.location.clone());
                    if let Some(first) = seen.get(&position) {
                        // Two counts of one position in one import would
                        // be applied in no defined order.
                        shared.reject(
                            line_number,
                            format!("the position is counted already on line {first}"),
                            line.to_owned(),
                        );
                    } else {
                        seen.insert(position, line_number);
                        if let Ok(mut unanswered) = shared.unanswered.lock() {
                            unanswered.insert(line_number, line.to_owned());
                        }
                        lines.push(parsed);
                        if lines.len() == LINES_PER_MESSAGE
                            && !send(std::mem::replace(
                                &mut lines,
                                Vec::with_capacity(LINES_PER_MESSAGE),
                            ))
                        {
                            // The stream ended; the reply side says why.
                            return Ok(());
                        }
                    }
                }
            }
        }
        line_number += 1;
    }
    if !lines.is_empty() {
        send(lines);
    }
    Ok(())
}

fn write_rejects(path: &Path, rejects: &[Reject]) -> io::Result<()> {
    let mut out = io::BufWriter::new(File::create(path)?);
    writeln!(out, "line,reason,text")?;
    for reject in rejects {
        writeln!(
            out,
            "{},{},{}",
            reject.line_number,
            csv_quote(&reject.reason),
            csv_quote(&reject.text)
        )?;
    }
    out.flush()
}

fn csv_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn format_summary(summary: &Summary) -> String {
    let mut text = format!(
        "imported {}\n  lines read  {}\n  applied     {}\n  unchanged   {} (replayed: imported before)\n  rejected    {}\n",
        summary.file, summary.lines_read, summary.applied, summary.replayed, summary.rejected
    );
    if let Some(path) = &summary.rejects_file {
        text.push_str(&format!("  rejects     {path}\n"));
    }
    text.push_str(&format!(
        "  elapsed     {:.1} s ({} lines/s)\n",
        summary.elapsed_ms as f64 / 1000.0,
        summary.lines_per_second
    ));
    text
}

/// A one-line progress display on stderr, when it is a terminal.
struct Progress {
    enabled: bool,
    total_bytes: u64,
    last: Mutex<Instant>,
}

impl Progress {
    fn new(json: bool, total_bytes: u64) -> Self {
        Self {
            enabled: !json && io::stderr().is_terminal(),
            total_bytes,
            last: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, shared: &Shared, summary: &Summary, started: Instant) {
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() < PROGRESS_EVERY {
            return;
        }
        *last = Instant::now();
        let done = summary.applied + summary.replayed;
        let rejected = shared.rejects.lock().map(|r| r.len() as u64).unwrap_or(0);
        // The file is read ahead of the node (HTTP/2 buffers): the share
        // done is of the lines answered, out of the file's lines as
        // estimated from the bytes read so far.
        let read = shared.lines_read.load(Ordering::Relaxed).max(1);
        let bytes = shared.bytes_read.load(Ordering::Relaxed).max(1);
        let estimated_lines =
            (read as u128 * self.total_bytes.max(bytes) as u128 / bytes as u128).max(1);
        let percent = ((done + rejected) as u128 * 100 / estimated_lines).min(100) as usize;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let width = 30;
        let filled = percent * width / 100;
        let _ = write!(
            io::stderr(),
            "\r[{}{}] {percent:>3}%  {done} applied  {rejected} rejected  {rate:.0} lines/s ",
            "#".repeat(filled),
            "-".repeat(width - filled),
        );
        let _ = io::stderr().flush();
    }

    fn clear(&self) {
        if self.enabled {
            let _ = write!(io::stderr(), "\r{:80}\r", "");
            let _ = io::stderr().flush();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn csv_parser() -> LineParser {
        LineParser {
            tenant: "acme".into(),
            reason: pb::AdjustmentReason::CycleCount,
            columns: Some(Columns {
                sku: 0,
                location: 1,
                on_hand: 2,
                counted_at: None,
            }),
        }
    }

    #[test]
    fn splits_quoted_csv_fields() {
        assert_eq!(
            split_csv(r#"a,"b,c","d""e",,"#).unwrap(),
            vec!["a", "b,c", "d\"e", "", ""]
        );
        assert!(split_csv(r#""open"#).is_err());
        assert!(split_csv(r#""a"b,c"#).is_err());
    }

    #[test]
    fn names_the_reason_of_a_bad_line() {
        let parser = csv_parser();
        let reason = |text: &str| parser.parse(2, text).unwrap_err();
        assert!(reason("mug,DC1,ten").contains("on_hand: \"ten\" is not a whole number"));
        assert!(reason("mug,DC1").contains("on_hand: missing"));
        assert!(reason("mug,DC1,-3").contains("negative"));
        assert!(reason(",DC1,3").contains("sku"), "{}", reason(",DC1,3"));
        assert!(reason(" mug,DC1,3").contains("white space"));
        assert_eq!(parser.parse(2, "mug,DC1,3").unwrap().on_hand, 3);
    }

    #[test]
    fn reads_json_lines_with_numbers_or_strings() {
        let parser = LineParser {
            columns: None,
            ..csv_parser()
        };
        let line = parser
            .parse(1, r#"{"sku":"mug","location":"DC1","on_hand":"7"}"#)
            .unwrap();
        assert_eq!((line.sku.as_str(), line.on_hand), ("mug", 7));
        assert!(parser
            .parse(1, r#"{"sku":"mug","on_hand":7}"#)
            .unwrap_err()
            .contains("location: missing"));
        assert!(parser.parse(1, "[1]").unwrap_err().contains("object"));
        assert!(parser.parse(1, "{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_line_key_depends_on_what_the_line_says_not_where_it_is() {
        let parser = csv_parser();
        let here = parser.parse(2, "mug,DC1,3").unwrap();
        let elsewhere = parser.parse(9_000, "mug,DC1,3").unwrap();
        let other_count = parser.parse(2, "mug,DC1,4").unwrap();
        assert_eq!(here.idempotency_key, elsewhere.idempotency_key);
        assert_ne!(here.idempotency_key, other_count.idempotency_key);
        assert!(here.idempotency_key.len() <= 128);
    }
}
