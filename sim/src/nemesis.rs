//! The seeded nemesis: a schedule of faults drawn from the seed (one at a
//! time, then overlapping), and its application in the step loop.
//!
//! turmoil's crash and bounce exist only on `Sim`, so the schedule is
//! applied between steps, not from inside a host. Partitions and holds are
//! counted per link, so two overlapping faults on one link heal only when
//! both ended.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::rng::Rng;
use crate::trace::{stamp, Trace};

/// Two days, in milliseconds: the skew of the cluster-faults issue's
/// `faketime` case.
pub const TWO_DAYS_MS: i64 = 2 * 24 * 3_600 * 1_000;

/// One fault. Host names are turmoil host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node cannot reach etcd (longer than the lease TTL: its lease
    /// expires and its shards move).
    EtcdCut { node: String },
    /// Two nodes cannot reach each other (forwarding between them fails).
    NodesCut { a: String, b: String },
    /// A client cannot reach one node (it retries through the others).
    ClientCut { client: String, node: String },
    /// The node cannot reach the store: every store call of its view fails.
    StoreCut { node: String },
    /// Every link of the node holds its messages, delivered in one burst
    /// when the fault ends (the closest turmoil has to a pause).
    Hold { node: String },
    /// The node crashes and restarts (bounce) when the fault ends.
    Crash { node: String },
    /// The node's etcd link holds while its store commits stall: its lease
    /// expires and its shards move while it still believes it owns them.
    Zombie { node: String },
    /// The node's wall clock runs `offset_ms` ahead (or behind).
    ClockSkew { node: String, offset_ms: i64 },
    /// etcd answers "no leader".
    EtcdNoLeader,
    /// etcd applies writes and drops their replies.
    EtcdApplyThenDrop,
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::EtcdCut { node } => write!(formatter, "partition {node} <-> etcd"),
            Fault::NodesCut { a, b } => write!(formatter, "partition {a} <-> {b}"),
            Fault::ClientCut { client, node } => write!(formatter, "partition {client} <-> {node}"),
            Fault::StoreCut { node } => write!(formatter, "store unreachable from {node}"),
            Fault::Hold { node } => write!(formatter, "hold every link of {node}, then release"),
            Fault::Crash { node } => write!(formatter, "crash {node}, then bounce"),
            Fault::Zombie { node } => write!(
                formatter,
                "zombie {node}: etcd link held, store commits stalled"
            ),
            Fault::ClockSkew { node, offset_ms } => {
                write!(
                    formatter,
                    "clock of {node} {:+.1} days",
                    *offset_ms as f64 / 86_400_000.0
                )
            }
            Fault::EtcdNoLeader => formatter.write_str("etcd: no leader"),
            Fault::EtcdApplyThenDrop => formatter.write_str("etcd: apply, then drop the reply"),
        }
    }
}

impl Fault {
    /// The fault's kind, for counts per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::EtcdCut { .. } => "etcd-cut",
            Fault::NodesCut { .. } => "nodes-cut",
            Fault::ClientCut { .. } => "client-cut",
            Fault::StoreCut { .. } => "store-cut",
            Fault::Hold { .. } => "hold",
            Fault::Crash { .. } => "crash",
            Fault::Zombie { .. } => "zombie",
            Fault::ClockSkew { .. } => "clock-skew",
            Fault::EtcdNoLeader => "etcd-no-leader",
            Fault::EtcdApplyThenDrop => "etcd-apply-then-drop",
        }
    }

    /// The nodes whose service this fault cuts: their liveness is judged
    /// from its end.
    pub fn cut_nodes(&self, nodes: &[String]) -> Vec<String> {
        match self {
            Fault::EtcdCut { node }
            | Fault::StoreCut { node }
            | Fault::Hold { node }
            | Fault::Crash { node }
            | Fault::Zombie { node }
            | Fault::ClockSkew { node, .. } => vec![node.clone()],
            Fault::NodesCut { a, b } => vec![a.clone(), b.clone()],
            Fault::ClientCut { .. } => Vec::new(),
            Fault::EtcdNoLeader | Fault::EtcdApplyThenDrop => nodes.to_vec(),
        }
    }

    /// Faults that must not overlap another of the same key (one crash of
    /// a node at a time; one setting of a knob at a time).
    fn exclusive_key(&self) -> Option<String> {
        match self {
            Fault::Crash { node } | Fault::Zombie { node } | Fault::Hold { node } => {
                Some(format!("host {node}"))
            }
            Fault::StoreCut { node } => Some(format!("store {node}")),
            Fault::ClockSkew { node, .. } => Some(format!("clock {node}")),
            Fault::EtcdNoLeader | Fault::EtcdApplyThenDrop => Some("etcd".into()),
            Fault::EtcdCut { .. } | Fault::NodesCut { .. } | Fault::ClientCut { .. } => None,
        }
    }
}

/// A fault and when it is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
    pub fault: Fault,
}

/// The hosts a schedule draws from and the stretch it fills.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: Vec<String>,
    pub clients: Vec<String>,
    pub lease_ttl: Duration,
    /// Faults start no earlier than this.
    pub from: Duration,
    /// One fault at a time until here, then overlapping ones.
    pub overlap_from: Duration,
    /// Every fault has ended by this.
    pub healed_by: Duration,
}

/// A seed's faults, ordered by start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<Window>,
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn draw_fault(rng: &mut Rng, shape: &Shape) -> Fault {
    let node = |rng: &mut Rng| shape.nodes[rng.index(shape.nodes.len())].clone();
    match rng.below(10) {
        0 => Fault::EtcdCut { node: node(rng) },
        1 => {
            let a = rng.index(shape.nodes.len());
            let b =
                (a + 1 + rng.index(shape.nodes.len().saturating_sub(1).max(1))) % shape.nodes.len();
            Fault::NodesCut {
                a: shape.nodes[a].clone(),
                b: shape.nodes[b].clone(),
            }
        }
        2 => Fault::ClientCut {
            client: shape.clients[rng.index(shape.clients.len())].clone(),
            node: node(rng),
        },
        3 => Fault::StoreCut { node: node(rng) },
        4 => Fault::Hold { node: node(rng) },
        5 => Fault::Crash { node: node(rng) },
        6 => Fault::Zombie { node: node(rng) },
        7 => Fault::ClockSkew {
            node: node(rng),
            offset_ms: if rng.below(2) == 0 {
                TWO_DAYS_MS
            } else {
                -TWO_DAYS_MS
            },
        },
        8 => Fault::EtcdNoLeader,
        _ => Fault::EtcdApplyThenDrop,
    }
}

/// How long a fault lasts: cuts of a node's lease longer than its TTL (so
/// it expires), the others 1-6 s.
fn draw_length(rng: &mut Rng, fault: &Fault, shape: &Shape) -> Duration {
    let ttl = shape.lease_ttl.as_millis() as u64;
    match fault {
        Fault::EtcdCut { .. } | Fault::Zombie { .. } | Fault::EtcdNoLeader => {
            millis(rng.between(ttl + 1_000, ttl + 4_000))
        }
        _ => millis(rng.between(1_000, 6_000)),
    }
}

impl Schedule {
    /// The schedule of `seed`: one fault at a time with gaps from
    /// `shape.from` to `shape.overlap_from`, then two to four overlapping
    /// ones, all ended by `shape.healed_by`.
    pub fn draw(seed: u64, shape: &Shape) -> Self {
        let mut rng = Rng::derive(seed, 3_000);
        let mut windows = Vec::new();
        let mut at = shape.from;
        loop {
            let fault = draw_fault(&mut rng, shape);
            let end = at + draw_length(&mut rng, &fault, shape);
            if end > shape.overlap_from {
                break;
            }
            windows.push(Window {
                start: at,
                end,
                fault,
            });
            at = end + millis(rng.between(500, 2_000));
        }
        let overlapping = rng.between(2, 4);
        let span = shape
            .healed_by
            .saturating_sub(shape.overlap_from)
            .as_millis() as u64;
        for _ in 0..overlapping {
            let fault = draw_fault(&mut rng, shape);
            let length = draw_length(&mut rng, &fault, shape).min(millis(span));
            let latest_start = span.saturating_sub(length.as_millis() as u64);
            let start = shape.overlap_from + millis(rng.below(latest_start + 1));
            let window = Window {
                start,
                end: start + length,
                fault,
            };
            let clashes = windows.iter().any(|other: &Window| {
                other.start < window.end
                    && window.start < other.end
                    && other.fault.exclusive_key().is_some()
                    && other.fault.exclusive_key() == window.fault.exclusive_key()
            });
            if !clashes {
                windows.push(window);
            }
        }
        windows.sort_by_key(|window| (window.start, window.end));
        Self { windows }
    }

    /// One line per fault, for the report of a seed.
    pub fn describe(&self) -> String {
        self.windows
            .iter()
            .map(|window| {
                format!(
                    "{} - {} {}",
                    stamp(window.start),
                    stamp(window.end),
                    window.fault
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// For every node, when its last cut healed (`default` for a node
    /// never cut).
    pub fn last_heal(&self, nodes: &[String], default: Duration) -> BTreeMap<String, Duration> {
        let mut healed: BTreeMap<String, Duration> =
            nodes.iter().map(|node| (node.clone(), default)).collect();
        for window in &self.windows {
            for node in window.fault.cut_nodes(nodes) {
                let at = healed.entry(node).or_insert(default);
                *at = (*at).max(window.end);
            }
        }
        healed
    }
}

/// The simulated network, as far as the nemesis moves it (`turmoil::Sim`;
/// a recording fake in the unit tests).
pub trait Network {
    fn partition(&mut self, a: &str, b: &str);
    fn repair(&mut self, a: &str, b: &str);
    fn hold(&mut self, a: &str, b: &str);
    fn release(&mut self, a: &str, b: &str);
    fn crash(&mut self, host: &str);
    fn bounce(&mut self, host: &str);
}

impl Network for turmoil::Sim<'_> {
    fn partition(&mut self, a: &str, b: &str) {
        turmoil::Sim::partition(self, a, b);
    }
    fn repair(&mut self, a: &str, b: &str) {
        turmoil::Sim::repair(self, a, b);
    }
    fn hold(&mut self, a: &str, b: &str) {
        turmoil::Sim::hold(self, a, b);
    }
    fn release(&mut self, a: &str, b: &str) {
        turmoil::Sim::release(self, a, b);
    }
    fn crash(&mut self, host: &str) {
        turmoil::Sim::crash(self, host);
    }
    fn bounce(&mut self, host: &str) {
        turmoil::Sim::bounce(self, host);
    }
}

/// The fault knobs outside the network: the store's, etcd's and the
/// nodes' clocks.
pub trait Knobs {
    fn store_reachable(&self, node: &str, reachable: bool);
    fn store_stalled(&self, node: &str, stalled: bool);
    fn clock_skew(&self, node: &str, offset_ms: i64);
    fn etcd_no_leader(&self, on: bool);
    fn etcd_apply_then_drop(&self, on: bool);
}

/// A schedule being applied.
pub struct Nemesis {
    schedule: Schedule,
    /// Every host but the one being held (a hold is on every link).
    hosts: Vec<String>,
    started: Vec<bool>,
    ended: Vec<bool>,
    partitions: BTreeMap<(String, String), u32>,
    holds: BTreeMap<(String, String), u32>,
    injected: usize,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Nemesis {
    /// `hosts`: every host of the simulation (the holds' other ends).
    pub fn new(schedule: Schedule, hosts: Vec<String>) -> Self {
        let count = schedule.windows.len();
        Self {
            schedule,
            hosts,
            started: vec![false; count],
            ended: vec![false; count],
            partitions: BTreeMap::new(),
            holds: BTreeMap::new(),
            injected: 0,
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Faults begun so far.
    pub fn injected(&self) -> usize {
        self.injected
    }

    /// Begins and ends what is due at simulated time `now`; ends first, so
    /// a fault ending and another beginning on one link in one step leave
    /// the link cut.
    pub fn tick(
        &mut self,
        now: Duration,
        network: &mut dyn Network,
        knobs: &dyn Knobs,
        trace: &Trace,
    ) {
        for index in 0..self.schedule.windows.len() {
            let window = &self.schedule.windows[index];
            if self.started[index] && !self.ended[index] && window.end <= now {
                self.ended[index] = true;
                let fault = window.fault.clone();
                trace.at(now, "nemesis", format_args!("heal: {fault}"));
                self.end(&fault, network, knobs);
            }
        }
        for index in 0..self.schedule.windows.len() {
            let window = &self.schedule.windows[index];
            if !self.started[index] && window.start <= now {
                self.started[index] = true;
                self.injected += 1;
                let fault = window.fault.clone();
                trace.at(now, "nemesis", format_args!("fault: {fault}"));
                self.begin(&fault, network, knobs);
            }
        }
    }

    fn cut(&mut self, a: &str, b: &str, network: &mut dyn Network) {
        let count = self.partitions.entry(link(a, b)).or_default();
        *count += 1;
        if *count == 1 {
            network.partition(a, b);
        }
    }

    fn uncut(&mut self, a: &str, b: &str, network: &mut dyn Network) {
        let count = self.partitions.entry(link(a, b)).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 {
            network.repair(a, b);
        }
    }

    fn hold(&mut self, a: &str, b: &str, network: &mut dyn Network) {
        let count = self.holds.entry(link(a, b)).or_default();
        *count += 1;
        if *count == 1 {
            network.hold(a, b);
        }
    }

    fn unhold(&mut self, a: &str, b: &str, network: &mut dyn Network) {
        let count = self.holds.entry(link(a, b)).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 {
            network.release(a, b);
        }
    }

    fn others(&self, node: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|host| *host != node)
            .cloned()
            .collect()
    }

    fn begin(&mut self, fault: &Fault, network: &mut dyn Network, knobs: &dyn Knobs) {
        match fault {
            Fault::EtcdCut { node } => self.cut(node, "etcd", network),
            Fault::NodesCut { a, b } => self.cut(a, b, network),
            Fault::ClientCut { client, node } => self.cut(client, node, network),
            Fault::StoreCut { node } => knobs.store_reachable(node, false),
            Fault::Hold { node } => {
                for other in self.others(node) {
                    self.hold(node, &other, network);
                }
            }
            Fault::Crash { node } => network.crash(node),
            Fault::Zombie { node } => {
                knobs.store_stalled(node, true);
                self.hold(node, "etcd", network);
            }
            Fault::ClockSkew { node, offset_ms } => knobs.clock_skew(node, *offset_ms),
            Fault::EtcdNoLeader => knobs.etcd_no_leader(true),
            Fault::EtcdApplyThenDrop => knobs.etcd_apply_then_drop(true),
        }
    }

    fn end(&mut self, fault: &Fault, network: &mut dyn Network, knobs: &dyn Knobs) {
        match fault {
            Fault::EtcdCut { node } => self.uncut(node, "etcd", network),
            Fault::NodesCut { a, b } => self.uncut(a, b, network),
            Fault::ClientCut { client, node } => self.uncut(client, node, network),
            Fault::StoreCut { node } => knobs.store_reachable(node, true),
            Fault::Hold { node } => {
                for other in self.others(node) {
                    self.unhold(node, &other, network);
                }
            }
            Fault::Crash { node } => network.bounce(node),
            Fault::Zombie { node } => {
                // The stale commits go first, then the held keep-alives:
                // the order a paused owner's own work resumes in.
                knobs.store_stalled(node, false);
                self.unhold(node, "etcd", network);
            }
            Fault::ClockSkew { node, .. } => knobs.clock_skew(node, 0),
            Fault::EtcdNoLeader => knobs.etcd_no_leader(false),
            Fault::EtcdApplyThenDrop => knobs.etcd_apply_then_drop(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn shape() -> Shape {
        Shape {
            nodes: vec!["node-1".into(), "node-2".into(), "node-3".into()],
            clients: vec!["client-1".into(), "client-2".into()],
            lease_ttl: Duration::from_secs(3),
            from: Duration::from_secs(10),
            overlap_from: Duration::from_secs(30),
            healed_by: Duration::from_secs(45),
        }
    }

    #[test]
    fn a_seed_fixes_the_schedule_which_heals_in_time_and_cuts_leases_longer_than_the_ttl() {
        let shape = shape();
        assert_eq!(Schedule::draw(5, &shape), Schedule::draw(5, &shape));
        assert_ne!(Schedule::draw(5, &shape), Schedule::draw(6, &shape));
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let schedule = Schedule::draw(seed, &shape);
            let single: Vec<_> = schedule
                .windows
                .iter()
                .filter(|w| w.start < shape.overlap_from)
                .collect();
            assert!(single.len() >= 2, "seed {seed}: {}", schedule.describe());
            for pair in single.windows(2) {
                assert!(pair[0].end < pair[1].start, "seed {seed} overlaps early");
            }
            for window in &schedule.windows {
                assert!(window.start >= shape.from && window.end <= shape.healed_by);
                if matches!(window.fault, Fault::EtcdCut { .. } | Fault::Zombie { .. }) {
                    assert!(window.end - window.start > shape.lease_ttl);
                }
                if let Fault::NodesCut { a, b } = &window.fault {
                    assert_ne!(a, b);
                }
                kinds.insert(window.fault.kind());
            }
        }
        assert_eq!(kinds.len(), 10, "64 seeds draw every kind of fault");
    }

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
    }

    impl Network for Recorder {
        fn partition(&mut self, a: &str, b: &str) {
            self.calls.borrow_mut().push(format!("partition {a} {b}"));
        }
        fn repair(&mut self, a: &str, b: &str) {
            self.calls.borrow_mut().push(format!("repair {a} {b}"));
        }
        fn hold(&mut self, a: &str, b: &str) {
            self.calls.borrow_mut().push(format!("hold {a} {b}"));
        }
        fn release(&mut self, a: &str, b: &str) {
            self.calls.borrow_mut().push(format!("release {a} {b}"));
        }
        fn crash(&mut self, host: &str) {
            self.calls.borrow_mut().push(format!("crash {host}"));
        }
        fn bounce(&mut self, host: &str) {
            self.calls.borrow_mut().push(format!("bounce {host}"));
        }
    }

    impl Knobs for Recorder {
        fn store_reachable(&self, node: &str, reachable: bool) {
            self.calls
                .borrow_mut()
                .push(format!("store {node} reachable={reachable}"));
        }
        fn store_stalled(&self, node: &str, stalled: bool) {
            self.calls
                .borrow_mut()
                .push(format!("store {node} stalled={stalled}"));
        }
        fn clock_skew(&self, node: &str, offset_ms: i64) {
            self.calls
                .borrow_mut()
                .push(format!("clock {node} {offset_ms}"));
        }
        fn etcd_no_leader(&self, on: bool) {
            self.calls.borrow_mut().push(format!("etcd no-leader={on}"));
        }
        fn etcd_apply_then_drop(&self, on: bool) {
            self.calls.borrow_mut().push(format!("etcd drop={on}"));
        }
    }

    fn window(start: u64, end: u64, fault: Fault) -> Window {
        Window {
            start: Duration::from_secs(start),
            end: Duration::from_secs(end),
            fault,
        }
    }

    #[test]
    fn overlapping_cuts_of_one_link_heal_when_the_last_ends_and_a_zombie_resumes_its_commits_first()
    {
        let etcd_cut = || Fault::EtcdCut {
            node: "node-1".into(),
        };
        let schedule = Schedule {
            windows: vec![
                window(1, 5, etcd_cut()),
                window(2, 3, etcd_cut()),
                window(
                    6,
                    9,
                    Fault::Zombie {
                        node: "node-2".into(),
                    },
                ),
                window(
                    10,
                    11,
                    Fault::Crash {
                        node: "node-3".into(),
                    },
                ),
            ],
        };
        let hosts = vec![
            "etcd".to_owned(),
            "node-1".into(),
            "node-2".into(),
            "node-3".into(),
        ];
        let mut nemesis = Nemesis::new(schedule, hosts);
        let mut network = Recorder::default();
        let knobs = Recorder::default();
        let trace = Trace::default();
        for second in 0..=12 {
            nemesis.tick(Duration::from_secs(second), &mut network, &knobs, &trace);
        }
        assert_eq!(
            network.calls.into_inner(),
            vec![
                "partition node-1 etcd",
                "repair node-1 etcd",
                "hold node-2 etcd",
                "release node-2 etcd",
                "crash node-3",
                "bounce node-3",
            ]
        );
        assert_eq!(
            knobs.calls.into_inner(),
            vec!["store node-2 stalled=true", "store node-2 stalled=false"]
        );
        assert_eq!(nemesis.injected(), 4);
        assert_eq!(trace.len(), 8);
    }

    #[test]
    fn the_last_heal_of_each_node_counts_for_liveness() {
        let schedule = Schedule {
            windows: vec![
                window(
                    10,
                    14,
                    Fault::EtcdCut {
                        node: "node-1".into(),
                    },
                ),
                window(
                    16,
                    18,
                    Fault::ClientCut {
                        client: "client-1".into(),
                        node: "node-2".into(),
                    },
                ),
                window(20, 22, Fault::EtcdNoLeader),
                window(
                    30,
                    35,
                    Fault::Crash {
                        node: "node-1".into(),
                    },
                ),
            ],
        };
        let nodes = shape().nodes;
        let healed = schedule.last_heal(&nodes, Duration::from_secs(5));
        assert_eq!(healed["node-1"], Duration::from_secs(35));
        assert_eq!(healed["node-2"], Duration::from_secs(22));
        assert_eq!(healed["node-3"], Duration::from_secs(22));
    }
}
