//! `skuld import positions`: a bulk load of counts through the CLI and the
//! ImportPositions stream against a real node. Good lines are applied once
//! (read back), bad ones land in the rejects file with their reason, and
//! importing again, as the same file or with its lines moved, changes
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use skuld_proto::v1 as pb;
use skuld_tests::metrics::Scrape;
use skuld_tests::requests::{header, key};
use skuld_tests::{NodeOptions, TestDir, TestNode};

const TENANT: &str = "acme";
/// Lines of the file (besides its header).
const LINES: u64 = 100_000;
/// Locations per SKU: one GetAvailability reads a SKU's positions back.
const LOCATIONS: u64 = 1_000;

fn sku(i: u64) -> String {
    format!("sku-{}", i / LOCATIONS)
}

fn location(i: u64) -> String {
    format!("L{}", i % LOCATIONS)
}

/// The file: a count per position, with bad lines mixed in every 97th
/// line; what each good position should end at, which file lines are bad
/// and why (a fragment of the reason), and which positions must be counted
/// before the import for their line to be refused by the node.
struct Fixture {
    csv: String,
    expected: BTreeMap<(String, String), i64>,
    bad: BTreeMap<u64, &'static str>,
    counted_before: Vec<u64>,
}

fn fixture() -> Fixture {
    let mut csv = String::from("sku,location,on_hand,note,counted_at_unix_ms\n");
    let mut expected = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let mut counted_before = Vec::new();
    let mut line_number = 1;
    for i in 0..LINES {
        line_number += 1;
        let (sku, location) = (sku(i), location(i));
        let on_hand = (i % 50) as i64;
        let kind = if i % 97 == 13 { (i / 97) % 7 } else { u64::MAX };
        let (line, reason) = match kind {
            0 => (
                format!("{sku},{location},ten,x"),
                Some("is not a whole number"),
            ),
            1 => (format!("{sku},{location}"), Some("on_hand: missing")),
            2 => (format!("{sku},{location},-4,x"), Some("negative")),
            3 => (
                format!("\"{sku}\t\",{location},4,x"),
                Some("control characters"),
            ),
            4 => (format!(",{location},4,x"), Some("must not be empty")),
            // Beyond what a position may hold: refused by the node.
            5 => (
                format!("{sku},{location},5000000000000,x"),
                Some("INVALID_ARGUMENT"),
            ),
            // Counted at 1 ms, older than the count applied before the
            // import: refused by the node.
            6 => {
                counted_before.push(i);
                (
                    format!("{sku},{location},4,x,1"),
                    Some("FAILED_PRECONDITION"),
                )
            }
            _ => (format!("{sku},{location},{on_hand},\"a, b\""), None),
        };
        writeln!(csv, "{line}").unwrap();
        match reason {
            Some(reason) => {
                bad.insert(line_number, reason);
            }
            None => {
                expected.insert((sku, location), on_hand);
            }
        }
    }
    // A second count of a position counted on line 2: refused locally.
    writeln!(csv, "{},{},9,x", sku(0), location(0)).unwrap();
    bad.insert(line_number + 1, "counted already on line 2");
    // A line that is not CSV.
    writeln!(csv, "\"sku-x,L1,3").unwrap();
    bad.insert(line_number + 2, "not closed");
    Fixture {
        csv,
        expected,
        bad,
        counted_before,
    }
}

/// `skuld import positions FILE --rejects REJECTS --json` against `node`.
fn import(node: &TestNode, file: &Path, rejects: &Path) -> (Output, serde_json::Value) {
    let output = std::process::Command::new(skuld_tests::skuld_binary().unwrap())
        .args(["--endpoint", &format!("http://{}", node.grpc_addr())])
        .args(["--json", "import", "positions", "--tenant", TENANT])
        .arg(file)
        .arg("--rejects")
        .arg(rejects)
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("summary not JSON ({e}): {output:?}"));
    (output, summary)
}

/// Line number to reason, from a rejects file.
fn rejected_lines(rejects: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(rejects).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("line,reason,text"));
    lines
        .map(|line| {
            let (number, rest) = line.split_once(',').unwrap();
            (number.parse().unwrap(), rest.to_owned())
        })
        .collect()
}

/// Every position's (on_hand, version), one GetAvailability per SKU.
async fn positions(node: &TestNode) -> BTreeMap<(String, String), (i64, u64)> {
    let mut inventory = node.inventory().await.unwrap();
    let mut found = BTreeMap::new();
    for s in 0..LINES / LOCATIONS {
        let sku = sku(s * LOCATIONS);
        let reply = inventory
            .get_availability(pb::GetAvailabilityRequest {
                tenant: TENANT.into(),
                sku: sku.clone(),
                locations: (0..LOCATIONS).map(location).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        for at in reply.locations {
            if at.version > 0 {
                found.insert((sku.clone(), at.location), (at.on_hand, at.version));
            }
        }
    }
    found
}

async fn metrics(node: &TestNode) -> Scrape {
    Scrape(node.http_get("/metrics").await.unwrap().1)
}

fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_applies_good_lines_once_and_names_every_bad_one() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let fixture = fixture();
    let mut inventory = node.inventory().await.unwrap();
    for &i in &fixture.counted_before {
        let position = key(TENANT, &sku(i), &location(i));
        inventory
            .set_on_hand(pb::SetOnHandRequest {
                header: header(&position, &format!("before-{i}")),
                on_hand: 11,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let file = dir.path().join("counts.csv");
    std::fs::write(&file, &fixture.csv).unwrap();
    let rejects = dir.path().join("rejects.csv");

    let started = Instant::now();
    let (output, summary) = import(&node, &file, &rejects);
    let first_run = started.elapsed();
    let good = fixture.expected.len() as u64;
    let bad = fixture.bad.len() as u64;
    assert!(
        !output.status.success(),
        "rejects make the exit code non-zero"
    );
    assert_eq!(count(&summary, "lines_read"), LINES + 2, "{summary}");
    assert_eq!(count(&summary, "applied"), good, "{summary}");
    assert_eq!(count(&summary, "replayed"), 0, "{summary}");
    assert_eq!(count(&summary, "rejected"), bad, "{summary}");
    eprintln!(
        "first import: {} lines in {:.1} s ({} lines/s)",
        LINES + 2,
        first_run.as_secs_f64(),
        count(&summary, "lines_per_second")
    );

    // Every bad line, and only those, with its reason.
    let rejected = rejected_lines(&rejects);
    assert_eq!(
        rejected.keys().copied().collect::<BTreeSet<_>>(),
        fixture.bad.keys().copied().collect::<BTreeSet<_>>()
    );
    for (line_number, reason) in &fixture.bad {
        let written = &rejected[line_number];
        assert!(written.contains(reason), "line {line_number}: {written}");
    }

    // Every good line applied once: its count, at version 1.
    let mut expected: BTreeMap<_, _> = fixture
        .expected
        .iter()
        .map(|(position, on_hand)| (position.clone(), (*on_hand, 1)))
        .collect();
    for &i in &fixture.counted_before {
        expected.insert((sku(i), location(i)), (11, 1));
    }
    let after_first = positions(&node).await;
    assert_eq!(after_first.len(), expected.len());
    assert_eq!(after_first, expected);
    let applied_metric =
        |scrape: Scrape| scrape.or_zero("skuld_import_lines_total", &[("outcome", "applied")]);
    let applied_before = applied_metric(metrics(&node).await);
    assert_eq!(applied_before, good as f64);

    // The same file again: every good line replays, nothing changes.
    let (_, again) = import(&node, &file, &rejects);
    assert_eq!(count(&again, "applied"), 0, "{again}");
    assert_eq!(count(&again, "replayed"), good, "{again}");
    assert_eq!(count(&again, "rejected"), bad, "{again}");

    // The good lines moved: reversed, in another file. Still replays.
    let mut moved = String::from("sku,location,on_hand\n");
    for ((sku, location), on_hand) in fixture.expected.iter().rev() {
        writeln!(moved, "{sku},{location},{on_hand}").unwrap();
    }
    let moved_file = dir.path().join("moved.csv");
    std::fs::write(&moved_file, moved).unwrap();
    let (output, moved_summary) = import(&node, &moved_file, &dir.path().join("moved-rejects.csv"));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(count(&moved_summary, "applied"), 0, "{moved_summary}");
    assert_eq!(count(&moved_summary, "replayed"), good, "{moved_summary}");

    assert_eq!(
        positions(&node).await,
        after_first,
        "versions and counts unchanged"
    );
    assert_eq!(applied_metric(metrics(&node).await), applied_before);
}

/// Cluster mode: an import sent to one node reaches every line's owner
/// (forwarded like a unary call); every node reads the counts back, and a
/// rerun through another node replays every line on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_each_line_of_an_import_is_applied_by_its_owner() {
    use skuld_tests::cluster::TestCluster;

    const CLUSTER_LINES: u64 = 3_000;
    let cluster = TestCluster::start(3).await.unwrap();
    let dir = TestDir::new().unwrap();
    let mut csv = String::from("sku,location,on_hand\n");
    for i in 0..CLUSTER_LINES {
        writeln!(csv, "{},{},{}", sku(i), location(i), i % 7).unwrap();
    }
    let file = dir.path().join("counts.csv");
    std::fs::write(&file, csv).unwrap();
    let rejects = dir.path().join("rejects.csv");
    let forwarded = |scrape: Scrape| scrape.or_zero("skuld_forwarded_total", &[]);

    let before = forwarded(metrics(cluster.node(0)).await);
    let (output, summary) = import(cluster.node(0), &file, &rejects);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(count(&summary, "applied"), CLUSTER_LINES, "{summary}");
    let sent_on = forwarded(metrics(cluster.node(0)).await) - before;
    // Node 0 owns about a third of the shards: the rest went to their owners.
    assert!(
        sent_on >= CLUSTER_LINES as f64 / 3.0,
        "only {sent_on} of {CLUSTER_LINES} lines forwarded"
    );

    for via in 0..3 {
        let mut inventory = cluster.inventory(via).await.unwrap();
        for s in 0..CLUSTER_LINES / LOCATIONS {
            let reply = inventory
                .get_availability(pb::GetAvailabilityRequest {
                    tenant: TENANT.into(),
                    sku: sku(s * LOCATIONS),
                    locations: (0..LOCATIONS).map(location).collect(),
                })
                .await
                .unwrap()
                .into_inner();
            for (n, at) in reply.locations.iter().enumerate() {
                let i = s * LOCATIONS + n as u64;
                assert_eq!(
                    (at.on_hand, at.version),
                    ((i % 7) as i64, 1),
                    "line {i} via {via}"
                );
            }
        }
    }

    let (output, again) = import(cluster.node(2), &file, &rejects);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(count(&again, "applied"), 0, "{again}");
    assert_eq!(count(&again, "replayed"), CLUSTER_LINES, "{again}");
}

/// The stream itself: a refused line does not end it, a message over the
/// limit does (INVALID_ARGUMENT) and none of its lines is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_stream_refuses_an_oversized_message_and_applies_none_of_it() {
    let dir = TestDir::new().unwrap();
    let node = TestNode::start(&dir.node_dir("node"), NodeOptions::default())
        .await
        .unwrap();
    let line = |n: u64, sku: &str, on_hand: i64| pb::ImportPositionLine {
        line_number: n,
        sku: sku.into(),
        location: "DC1".into(),
        on_hand,
        idempotency_key: format!("k-{n}"),
        ..Default::default()
    };
    let good = pb::ImportPositionsRequest {
        tenant: TENANT.into(),
        lines: vec![line(1, "mug", 5), line(2, "cup", -1)],
    };
    let oversized = pb::ImportPositionsRequest {
        tenant: TENANT.into(),
        lines: (10..1_011)
            .map(|n| line(n, &format!("big-{n}"), 1))
            .collect(),
    };
    let mut inventory = node.inventory().await.unwrap();
    let mut replies = inventory
        .import_positions(futures::stream::iter([good]))
        .await
        .unwrap()
        .into_inner();
    let first = replies.message().await.unwrap().unwrap();
    let mut results = first.results.clone();
    results.sort_by_key(|result| result.line_number);
    assert_eq!(results[0].outcome(), pb::ImportLineOutcome::Applied);
    assert_eq!(results[1].outcome(), pb::ImportLineOutcome::Refused);
    assert_eq!(
        results[1].code,
        tonic::Code::InvalidArgument as i32,
        "{results:?}"
    );
    assert!(replies.message().await.unwrap().is_none());

    let mut replies = inventory
        .import_positions(futures::stream::iter([oversized]))
        .await
        .unwrap()
        .into_inner();
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let missing = inventory
        .get_position(skuld_tests::requests::get(&key(TENANT, "big-10", "DC1")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
