//! Cluster mode with TLS to its services: etcd with client certificates
//! required (`--client-cert-auth`) and PostgreSQL with `ssl = on` and `cert`
//! authentication for the `skuld` role (pg_hba `hostssl ... cert`), each a
//! real server. Nodes serve over both; a node whose client certificate is
//! of another CA, or that has none, stops before it stores anything and
//! says why; a client certificate rotated on disk is used by the next
//! connection, without a restart, while open connections stay up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use skuld_proto::v1 as pb;
use skuld_tests::certs::{write_replacing, CertFiles, Leaf, TestCa};
use skuld_tests::cluster::{node_id, owner_in, peer_tls_options, TEST_LEASE_TTL_SECS, TEST_SHARDS};
use skuld_tests::requests::{get, key, receive, reserve};
use skuld_tests::services::{Etcd, EtcdTls, Postgres, PostgresTls};
use skuld_tests::workload::channel;
use skuld_tests::{NodeOptions, TestDir, TestNode};
use tonic::transport::Channel;
use tonic::Code;

type Inventory = pb::inventory_service_client::InventoryServiceClient<Channel>;
type Admin = pb::admin_service_client::AdminServiceClient<Channel>;

/// The role the nodes log in as: the CN of their PostgreSQL certificate.
const ROLE: &str = "skuld";
const DATABASE: &str = "skuld";
/// Names in every server certificate here: the services listen on loopback.
const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

/// etcd and PostgreSQL on TLS, their CA (which also signs the nodes'
/// client certificates), and the cluster's own CA for the peer listener.
struct Services {
    dir: TestDir,
    ca: TestCa,
    /// The CA file nodes check both servers against.
    server_ca: std::path::PathBuf,
    /// etcd's `--trusted-ca-file`: the CA its clients' certificates must
    /// chain to (a copy, so a test can rotate it).
    etcd_client_ca: std::path::PathBuf,
    etcd: Etcd,
    postgres: Postgres,
    peer_ca: TestCa,
}

impl Services {
    fn start() -> Self {
        let dir = TestDir::new().unwrap();
        let certs = dir.path().join("certs");
        let ca = TestCa::new("skuld test infrastructure CA").unwrap();
        let etcd_server = ca
            .issue(&Leaf::new("etcd", LOOPBACK), &certs, "etcd-server")
            .unwrap();
        let etcd_client_ca = certs.join("etcd-trusted-clients.pem");
        write_replacing(&etcd_client_ca, ca.pem()).unwrap();
        let etcd = Etcd::start_tls(
            dir.path(),
            EtcdTls {
                server: etcd_server.clone(),
                client_ca: etcd_client_ca.clone(),
            },
        )
        .unwrap();
        let pg_server = ca
            .issue(&Leaf::new("postgres", LOOPBACK), &certs, "pg-server")
            .unwrap();
        let postgres = Postgres::start_tls(&PostgresTls {
            server: pg_server.clone(),
            client_ca: pg_server.ca.clone(),
            cert_roles: vec![ROLE.into()],
        })
        .unwrap();
        Self {
            server_ca: etcd_server.ca,
            etcd_client_ca,
            dir,
            ca,
            etcd,
            postgres,
            peer_ca: TestCa::new("skuld test cluster CA").unwrap(),
        }
    }

    /// The `skuld` role and its database (the role owns it, so the nodes'
    /// migrations can create their tables).
    async fn create_database(&self) {
        let admin = self.postgres.admin("postgres").await.unwrap();
        // One statement each: CREATE DATABASE cannot run in the implicit
        // transaction of a multi-statement string.
        for sql in [
            format!("CREATE ROLE {ROLE} LOGIN"),
            format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
    }

    fn issue(&self, ca: &TestCa, common_name: &str, stem: &str) -> CertFiles {
        ca.issue(
            &Leaf::new(common_name, LOOPBACK),
            &self.dir.path().join("certs"),
            stem,
        )
        .unwrap()
    }

    /// The command line of node `index`, presenting `etcd_cert` to etcd
    /// and `postgres_cert` to PostgreSQL (none: no client certificate).
    fn node_options(
        &self,
        index: usize,
        etcd_cert: Option<&CertFiles>,
        postgres_cert: Option<&CertFiles>,
    ) -> NodeOptions {
        let mut options = peer_tls_options(&self.peer_ca, self.dir.path(), &node_id(index))
            .unwrap()
            .arg("--etcd-endpoints", self.etcd.endpoint())
            .arg("--etcd-tls-ca-file", self.server_ca.display())
            .arg(
                "--postgres-url",
                format!(
                    "postgres://{ROLE}@127.0.0.1:{}/{DATABASE}",
                    self.postgres.port()
                ),
            )
            .arg("--postgres-tls-ca-file", self.server_ca.display())
            .arg("--node-id", node_id(index))
            .arg("--shard-count", TEST_SHARDS)
            .arg("--lease-ttl-secs", TEST_LEASE_TTL_SECS)
            .arg("--drain-timeout-secs", 10)
            .arg("--postgres-pool-size", 4)
            .arg("--tls-reload-interval-secs", 1);
        if let Some(cert) = etcd_cert {
            options = options
                .arg("--etcd-tls-cert-file", cert.cert.display())
                .arg("--etcd-tls-key-file", cert.key.display());
        }
        if let Some(cert) = postgres_cert {
            options = options
                .arg("--postgres-tls-cert-file", cert.cert.display())
                .arg("--postgres-tls-key-file", cert.key.display());
        }
        options
    }

    async fn start_node(&self, index: usize, options: NodeOptions) -> anyhow::Result<TestNode> {
        TestNode::start(&self.dir.node_dir(&node_id(index)), options).await
    }

    /// The nodes' sessions as PostgreSQL sees them: (pid, TLS on, client
    /// certificate DN, its serial in decimal, role).
    async fn sessions(&self) -> Vec<Session> {
        let admin = self.postgres.admin("postgres").await.unwrap();
        admin
            .query(
                "SELECT a.pid, s.ssl, coalesce(s.client_dn, ''), \
                        coalesce(s.client_serial::text, ''), a.usename::text \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'skuld' ORDER BY a.pid",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| Session {
                pid: row.get(0),
                ssl: row.get(1),
                client_dn: row.get(2),
                serial: row.get(3),
                role: row.get(4),
            })
            .collect()
    }

    /// Ends every session of the nodes, as a database restart would: the
    /// pools connect again.
    async fn end_sessions(&self) {
        self.postgres
            .admin("postgres")
            .await
            .unwrap()
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'skuld'",
                &[],
            )
            .await
            .unwrap();
    }

    /// Tables in the nodes' database: none until a node's migrations ran.
    async fn tables(&self) -> i64 {
        self.postgres
            .admin(DATABASE)
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    pid: i32,
    ssl: bool,
    client_dn: String,
    serial: String,
    role: String,
}

/// The serial of the certificate in `path`, in decimal (as pg_stat_ssl
/// shows it).
fn serial(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.tbs_certificate.serial.to_string()
}

async fn inventory(node: &TestNode) -> Inventory {
    Inventory::new(channel(&node.grpc_addr).await.unwrap())
}

async fn admin(node: &TestNode) -> Admin {
    Admin::new(channel(&node.grpc_addr).await.unwrap())
}

/// Waits until `nodes` are the members and serve every shard between them.
async fn wait_settled(nodes: &[&TestNode]) {
    let expected: BTreeSet<String> = (0..nodes.len()).map(node_id).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut admin = admin(nodes[0]).await;
        let members: BTreeSet<String> = admin
            .list_members(pb::ListMembersRequest {})
            .await
            .unwrap()
            .into_inner()
            .members
            .into_iter()
            .map(|member| member.node_id)
            .collect();
        let shards = admin
            .list_shards(pb::ListShardsRequest {})
            .await
            .unwrap()
            .into_inner()
            .shards;
        let mut served = 0;
        for node in nodes {
            served += admin_of(node).await;
        }
        if members == expected
            && shards.iter().all(|shard| expected.contains(&shard.owner))
            && served == TEST_SHARDS
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: members {members:?}, {served} shards served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn admin_of(node: &TestNode) -> u32 {
    admin(node)
        .await
        .node_status(pb::NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .shards_served
}

/// Receives 10 units of `sku` and reserves 2 through `client`, retrying
/// what a moving shard or a reconnecting pool refuses as UNAVAILABLE; the
/// node that owns the position.
async fn stock_and_reserve(client: &mut Inventory, sku: &str, step: &str) -> String {
    let position = key("tls", sku, "DC1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = client
            .adjust(receive(&position, &format!("{sku}-{step}-in"), 10))
            .await;
        let reserved = match &received {
            Ok(_) => {
                client
                    .reserve(reserve(&position, &format!("{sku}-{step}-r"), 2, 600))
                    .await
            }
            Err(status) => Err(status.clone()),
        };
        match reserved {
            Ok(reply) => return owner_in(&Ok(reply)).expect("a cluster reply names its owner"),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{sku} {step}: {status:?}"),
        }
    }
}

/// The reservations of `sku` as `client` reads them.
async fn reservations(client: &mut Inventory, sku: &str) -> usize {
    client
        .get_position(get(&key("tls", sku, "DC1")))
        .await
        .unwrap()
        .into_inner()
        .position
        .expect("a position")
        .active_reservations as usize
}

#[tokio::test]
async fn nodes_serve_over_etcd_mtls_and_postgres_cert_auth() {
    let services = Services::start();
    services.create_database().await;
    let mut nodes = Vec::new();
    for index in 0..2 {
        let etcd_cert = services.issue(&services.ca, &node_id(index), &format!("etcd-{index}"));
        let pg_cert = services.issue(&services.ca, ROLE, &format!("pg-{index}"));
        let options = services.node_options(index, Some(&etcd_cert), Some(&pg_cert));
        nodes.push(services.start_node(index, options).await.unwrap());
    }
    wait_settled(&[&nodes[0], &nodes[1]]).await;
    let mut clients = [inventory(&nodes[0]).await, inventory(&nodes[1]).await];
    let mut owners = BTreeSet::new();
    let mut forwarded = 0;
    for index in 0..8 {
        let sku = format!("SKU-{index}");
        let owner = stock_and_reserve(&mut clients[index % 2], &sku, "a").await;
        // Over the peer API (mTLS) when the other node owns the position.
        forwarded += usize::from(owner != node_id(index % 2));
        owners.insert(owner);
        // Read back through the other node.
        assert_eq!(reservations(&mut clients[(index + 1) % 2], &sku).await, 1);
    }
    assert_eq!(owners.len(), 2, "both nodes own positions: {owners:?}");
    assert!(forwarded > 0, "no request was forwarded");
    let sessions = services.sessions().await;
    assert!(!sessions.is_empty(), "no session of the nodes");
    for session in &sessions {
        assert!(session.ssl, "a session without TLS: {session:?}");
        assert_eq!(session.role, ROLE, "{session:?}");
        assert_eq!(session.client_dn, format!("/CN={ROLE}"), "{session:?}");
    }
}

/// What a node presents to etcd and PostgreSQL, and what its error says.
type RefusalCase<'a> = (
    &'a str,
    Option<&'a CertFiles>,
    Option<&'a CertFiles>,
    &'a [&'a str],
);

#[tokio::test]
async fn a_node_with_the_wrong_certificates_stops_and_says_why() {
    let services = Services::start();
    services.create_database().await;
    let other_ca = TestCa::new("another CA").unwrap();
    let good_etcd = services.issue(&services.ca, "node", "etcd-good");
    let good_pg = services.issue(&services.ca, ROLE, "pg-good");
    let foreign_etcd = services.issue(&other_ca, "node", "etcd-foreign");
    let foreign_pg = services.issue(&other_ca, ROLE, "pg-foreign");
    let cases: [RefusalCase; 4] = [
        (
            "etcd certificate of another CA",
            Some(&foreign_etcd),
            Some(&good_pg),
            &[
                "cannot join the cluster through etcd",
                "etcd refused this node's client certificate",
            ],
        ),
        (
            "no etcd certificate",
            None,
            Some(&good_pg),
            &[
                "cannot join the cluster through etcd",
                "etcd refused this node's client certificate",
            ],
        ),
        (
            "PostgreSQL certificate of another CA",
            Some(&good_etcd),
            Some(&foreign_pg),
            &[
                "cannot open the PostgreSQL store",
                "PostgreSQL refused this node's client certificate",
            ],
        ),
        (
            "no PostgreSQL certificate",
            Some(&good_etcd),
            None,
            &[
                "cannot open the PostgreSQL store",
                "connection requires a valid client certificate",
            ],
        ),
    ];
    for (index, (case, etcd_cert, pg_cert, expected)) in cases.into_iter().enumerate() {
        let options = services.node_options(index, etcd_cert, pg_cert);
        let started = Instant::now();
        let error = match services.start_node(index, options).await {
            Ok(_) => panic!("{case}: the node started"),
            Err(error) => format!("{error:#}"),
        };
        let line = error
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| panic!("{case}: no error line in\n{error}"));
        for part in expected {
            assert!(line.contains(part), "{case}: {part:?} not in {line:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{case}: took {:?}",
            started.elapsed()
        );
        eprintln!("{case}: {line}");
    }
    // A server certificate that is not of the CA the node trusts for it:
    // the node refuses the server.
    let other_ca_file = services.dir.path().join("certs/other-ca.crt");
    write_replacing(&other_ca_file, other_ca.pem()).unwrap();
    for (index, (flag, expected)) in [
        (
            "--etcd-tls-ca-file",
            "etcd's certificate does not verify against etcd_tls_ca_file",
        ),
        (
            "--postgres-tls-ca-file",
            "PostgreSQL's certificate does not verify against postgres_tls_ca_file",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut options = services.node_options(4 + index, Some(&good_etcd), Some(&good_pg));
        let at = options.args.iter().position(|arg| arg == flag).unwrap();
        options.args[at + 1] = other_ca_file.display().to_string();
        let error = match services.start_node(4 + index, options).await {
            Ok(_) => panic!("{flag} of another CA: the node started"),
            Err(error) => format!("{error:#}"),
        };
        let line = error
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| panic!("{flag}: no error line in\n{error}"));
        assert!(line.contains(expected), "{flag}: {line}");
        eprintln!("{flag} of another CA: {line}");
    }
    // Nothing was stored: no node got as far as the migrations.
    assert_eq!(services.tables().await, 0);
    // A node with the right certificates joins alone: none of the refused
    // ones is a member (the PostgreSQL cases had registered, and left).
    let node = services
        .start_node(
            9,
            services.node_options(9, Some(&good_etcd), Some(&good_pg)),
        )
        .await
        .unwrap();
    let members: Vec<String> = admin(&node)
        .await
        .list_members(pb::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|member| member.node_id)
        .collect();
    assert_eq!(members, vec![node_id(9)]);
    // Each refusal was the server's, for the reason the node gave.
    let etcd_log = std::fs::read_to_string(services.etcd.log_path()).unwrap();
    assert!(
        etcd_log.contains("rejected connection"),
        "etcd logged no rejected connection"
    );
    let pg_log = std::fs::read_to_string(services.postgres.log_path()).unwrap();
    for said in [
        "connection requires a valid client certificate",
        "could not accept SSL connection",
    ] {
        assert!(pg_log.contains(said), "{said:?} not in {pg_log}");
    }
}

#[tokio::test]
async fn a_rotated_postgres_client_certificate_is_used_by_new_connections() {
    let services = Services::start();
    services.create_database().await;
    let etcd_cert = services.issue(&services.ca, "node", "etcd");
    let first = services.issue(&services.ca, ROLE, "pg-client");
    let first_serial = serial(&first.cert);
    let node = services
        .start_node(0, services.node_options(0, Some(&etcd_cert), Some(&first)))
        .await
        .unwrap();
    let mut client = inventory(&node).await;
    stock_and_reserve(&mut client, "ROT", "before").await;
    let before = services.sessions().await;
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|session| session.serial == first_serial),
        "{before:?}"
    );

    // Rotated in place, as Kubernetes updates a mounted secret: same paths,
    // a new certificate and key of the same CA.
    let second = services.issue(&services.ca, ROLE, "pg-client");
    let second_serial = serial(&second.cert);
    assert_ne!(first_serial, second_serial);
    stock_and_reserve(&mut client, "ROT", "rotated").await;
    // The rotation alone closes nothing: the sessions open before are
    // still there, on the first certificate.
    let after_rotation = services.sessions().await;
    for session in &before {
        assert!(
            after_rotation.contains(session),
            "{session:?} was closed: {after_rotation:?}"
        );
    }

    // New connections (the old ones ended, as a database restart would end
    // them) present the second certificate, without a restart of the node.
    services.end_sessions().await;
    stock_and_reserve(&mut client, "ROT", "reconnected").await;
    let reconnected = services.sessions().await;
    assert!(!reconnected.is_empty());
    assert!(
        reconnected
            .iter()
            .all(|session| session.serial == second_serial),
        "first {first_serial}, second {second_serial}: {reconnected:?}"
    );
    assert!(node
        .log()
        .contains("TLS files changed: new connections use them"));

    // A rotation seen half-way (a key that is not the certificate's) is
    // refused with a warning naming the file, on the reload timer, before
    // any connection needs it; new connections keep the second certificate.
    let stray = services.issue(&services.ca, ROLE, "stray");
    std::fs::copy(&stray.key, &second.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let log = node.log();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("TLS files changed but cannot be used"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no warning in the node log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        warning.contains("postgres_client") && warning.contains(&second.key.display().to_string()),
        "{warning}"
    );
    services.end_sessions().await;
    stock_and_reserve(&mut client, "ROT", "half-rotated").await;
    let kept = services.sessions().await;
    assert!(!kept.is_empty());
    assert!(
        kept.iter().all(|session| session.serial == second_serial),
        "{kept:?}"
    );
    assert_eq!(reservations(&mut client, "ROT").await, 4);
}

#[tokio::test]
async fn a_rotated_etcd_client_certificate_is_used_when_the_node_reconnects() {
    let mut services = Services::start();
    services.create_database().await;
    let etcd_cert = services.issue(&services.ca, "node", "etcd-client");
    let pg_cert = services.issue(&services.ca, ROLE, "pg");
    let node = services
        .start_node(
            0,
            services.node_options(0, Some(&etcd_cert), Some(&pg_cert)),
        )
        .await
        .unwrap();
    let mut client = inventory(&node).await;
    stock_and_reserve(&mut client, "ETCD", "before").await;

    // The CA of etcd's clients changes: a new one signs the node's new
    // certificate (written in place) and etcd, restarted, trusts only it.
    // The node reaches etcd again only if its reconnect reads the files.
    let new_ca = TestCa::new("rotated infrastructure CA").unwrap();
    services.issue(&new_ca, "node", "etcd-client");
    write_replacing(&services.etcd_client_ca, new_ca.pem()).unwrap();
    services.etcd.restart().unwrap();

    // Past twice the lease TTL: a node cut off from etcd would have
    // stopped serving its shards by now.
    tokio::time::sleep(Duration::from_secs(2 * TEST_LEASE_TTL_SECS)).await;
    stock_and_reserve(&mut client, "ETCD", "after").await;
    let members: Vec<String> = admin(&node)
        .await
        .list_members(pb::ListMembersRequest {})
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|member| member.node_id)
        .collect();
    assert_eq!(members, vec![node_id(0)]);
    assert_eq!(admin_of(&node).await, TEST_SHARDS);
    let log = node.log();
    assert!(
        log.lines().any(
            |line| line.contains("TLS files changed: new connections use them")
                && line.contains("etcd_client")
        ),
        "{log}"
    );
    assert_eq!(reservations(&mut client, "ETCD").await, 2);
}

#[tokio::test]
async fn a_node_set_up_for_postgres_tls_refuses_a_server_without_it() {
    // A PostgreSQL without TLS that would let the node in in plaintext
    // (trust): with a CA configured the node must not fall back to it, as
    // sslmode=prefer would.
    let dir = TestDir::new().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let postgres = Postgres::start().unwrap();
    let url = postgres.create_database(DATABASE).await.unwrap();
    let ca = TestCa::new("skuld test infrastructure CA").unwrap();
    let client = ca
        .issue(&Leaf::new(ROLE, LOOPBACK), &dir.path().join("certs"), "pg")
        .unwrap();
    let peer_ca = TestCa::new("skuld test cluster CA").unwrap();
    let options = peer_tls_options(&peer_ca, dir.path(), &node_id(0))
        .unwrap()
        .arg("--etcd-endpoints", etcd.endpoint())
        .arg("--postgres-url", url)
        .arg("--postgres-tls-ca-file", client.ca.display())
        .arg("--postgres-tls-cert-file", client.cert.display())
        .arg("--postgres-tls-key-file", client.key.display())
        .arg("--node-id", node_id(0))
        .arg("--shard-count", TEST_SHARDS)
        .arg("--lease-ttl-secs", TEST_LEASE_TTL_SECS);
    let error = match TestNode::start(&dir.node_dir(&node_id(0)), options).await {
        Ok(_) => panic!("the node started without TLS to PostgreSQL"),
        Err(error) => format!("{error:#}"),
    };
    let line = error
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in\n{error}"));
    assert!(line.contains("cannot open the PostgreSQL store"), "{line}");
    assert!(line.contains("server does not support TLS"), "{line}");
    let tables: i64 = postgres
        .admin(DATABASE)
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the node wrote in plaintext");
}
