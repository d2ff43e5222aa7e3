//! lock-zk against real ZooKeeper servers: mutual exclusion with Apache Curator's
//! `InterProcessMutex` (a Java contender compiled by the test), what kazoo's `Lock` does on
//! the same path, the disconnect grace, and empty lock directories removed by the server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use conformance_tests::fixtures::zk::{ZkEnsemble, ZOOKEEPER_JAR};
use lock_core::{LockClient, LossReason};
use lock_zk::{ZkBackend, ZkOptions};

const CURATOR_JARS: &[&str] = &[
    "/usr/share/java/curator-client.jar",
    "/usr/share/java/curator-framework.jar",
    "/usr/share/java/curator-recipes.jar",
    ZOOKEEPER_JAR,
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/guava.jar",
    "/usr/share/java/slf4j-api.jar",
];

async fn client(connect: &str, session: Duration) -> LockClient {
    let o = ZkOptions::new(connect).session_timeout(session);
    LockClient::new(ZkBackend::connect(o).await.expect("connect to ZooKeeper"))
}

/// A contender process of another client (Curator, kazoo) driven over stdin.
struct Contender {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Contender {
    /// Curator's `InterProcessMutex`, compiled from tests/java.
    fn curator(connect: &str, path: &str) -> Self {
        for jar in CURATOR_JARS {
            assert!(
                std::path::Path::new(jar).is_file(),
                "{jar} is missing: install Debian's libcurator-recipes-java and zookeeper (bash scripts/test.sh does)"
            );
        }
        let classes = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("curator-contender");
        std::fs::create_dir_all(&classes).expect("class dir");
        let cp = CURATOR_JARS.join(":");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/CuratorContender.java");
        let javac = Command::new("javac")
            .args(["-d", &classes.display().to_string(), "-cp", &cp, src])
            .status()
            .expect("javac: install a JDK (default-jdk-headless; bash scripts/test.sh does)");
        assert!(javac.success(), "javac failed");
        let mut cmd = Command::new("java");
        cmd.args(["-cp", &format!("{}:{cp}", classes.display()), "CuratorContender", connect, path]);
        Self::spawn(cmd)
    }

    /// kazoo's `Lock`, from the virtualenv the test command makes.
    fn kazoo(connect: &str, path: &str) -> Self {
        let python = std::env::var_os("DISTLOCK_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python")
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kazoo_contender.py");
        let mut cmd = Command::new(&python);
        cmd.args([script, connect, path]);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the contender (bash scripts/test.sh installs Java, Curator and kazoo)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut c = Self { child, stdin, stdout };
        assert_eq!(c.line(), "READY", "the contender did not start");
        c
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read from the contender");
        l.trim().to_owned()
    }

    fn send(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to the contender");
        self.stdin.flush().expect("flush");
        self.line()
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_with_curators_interprocessmutex() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = client(&connect, Duration::from_secs(10)).await;
    let key = format!("interop/{}", uuid::Uuid::new_v4().simple());
    let path = format!("/distlock/{key}");
    let mut curator = tokio::task::block_in_place(|| Contender::curator(&connect, &path));

    // Curator holds: we are excluded, and see a holder.
    assert_eq!(tokio::task::block_in_place(|| curator.send("acquire 5000")), "HELD");
    assert!(ours.lock(&key).try_acquire().await.expect("try").is_none(), "took a lock Curator holds");
    let info = ours.inspect(&key).await.expect("inspect").expect("Curator's holder is visible");
    assert!(info.fencing_token.is_some());
    // We queue behind Curator and get the lock when it releases.
    let waiter = {
        let (ours, key) = (ours.clone(), key.clone());
        tokio::spawn(async move { ours.lock(&key).wait(Duration::from_secs(20)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "our waiter got past Curator's holder");
    assert_eq!(tokio::task::block_in_place(|| curator.send("release")), "RELEASED");
    let g = waiter.await.expect("join").expect("our waiter gets the lock after Curator's release");
    assert!(g.fencing_token() > info.fencing_token.expect("token"), "fencing did not increase");

    // We hold: Curator is excluded until we release.
    assert_eq!(tokio::task::block_in_place(|| curator.send("acquire 300")), "BUSY");
    g.release().await.expect("release");
    assert_eq!(tokio::task::block_in_place(|| curator.send("acquire 5000")), "HELD");
    assert_eq!(tokio::task::block_in_place(|| curator.send("release")), "RELEASED");
    let g = ours.lock(&key).try_acquire().await.expect("try").expect("free after Curator's release");
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disconnect_keeps_the_lock_and_a_long_one_loses_it() {
    let mut zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let session = Duration::from_secs(4);
    let locks = client(&connect, session).await;
    let g = locks.lock("grace/k").auto_renew().acquire().await.expect("acquire");
    let fence = g.fencing_token();

    // A pause far shorter than the grace (half the session timeout): nothing is lost.
    zk.servers[0].process().pause().expect("pause");
    tokio::time::sleep(Duration::from_millis(500)).await;
    zk.servers[0].process().resume().expect("resume");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(g.is_held(), "a 500 ms pause lost the lock");
    assert!(tokio::time::timeout(Duration::from_millis(10), g.lost()).await.is_err());

    // A pause longer than the session timeout: the loss signal fires by the grace bound,
    // before the server could have expired the session.
    let paused_at = Instant::now();
    zk.servers[0].process().pause().expect("pause");
    let reason = tokio::time::timeout(session * 2, g.lost()).await;
    let after = paused_at.elapsed();
    zk.servers[0].process().resume().expect("resume");
    let reason = reason.expect("a long disconnect did not fire the loss signal");
    // The session's grace, the lease's valid_until and the renewal that finds the session gone
    // all end at the same moment: any of them may report it first.
    assert!(
        matches!(reason, LossReason::SessionLost | LossReason::Expired | LossReason::NotHeld),
        "loss reason {reason:?}"
    );
    assert!(!g.is_held(), "is_held is true after the session was lost");
    assert!(after < session, "the loss fired only after {after:?}, the session timeout is {session:?}");

    // The backend opens a new session; the lock can be taken again, with a greater token.
    let g2 = locks.lock("grace/k").wait(Duration::from_secs(20)).acquire().await.expect("after the loss");
    assert!(g2.fencing_token() > fence);
    g2.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lock_directories_are_removed() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let locks = client(&connect, Duration::from_secs(10)).await;
    let key = format!("gc/{}", uuid::Uuid::new_v4().simple());
    let g = locks.lock(&key).acquire().await.expect("acquire");
    let raw = zookeeper_client::Client::connect(&connect).await.expect("raw client");
    let dir = format!("/distlock/{key}");
    assert!(raw.check_stat(&dir).await.expect("stat").is_some(), "no lock directory while held");
    g.release().await.expect("release");
    // A dropped waiting acquire leaves no child behind either.
    let holder = locks.lock(&key).acquire().await.expect("acquire");
    let waiting = locks.lock(&key).wait(Duration::from_secs(30)).acquire();
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting).await.is_err());
    holder.release().await.expect("release");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if raw.check_stat(&dir).await.expect("stat").is_none() {
            break;
        }
        let left = raw.list_children(&dir).await.unwrap_or_default();
        assert!(Instant::now() < deadline, "the empty lock directory {dir} stayed (children: {left:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kazoo's `Lock` orders only children named `<uuid>__lock__<sequence>`: it excludes
/// distlock (distlock orders every sequential child), but does not see distlock's or
/// Curator's children, so it takes a lock distlock holds. The docs say not to mix them; this
/// checks that what they say is still true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_is_excluded_by_order_but_does_not_exclude_us() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = client(&connect, Duration::from_secs(10)).await;
    let key = format!("kazoo/{}", uuid::Uuid::new_v4().simple());
    let path = format!("/distlock/{key}");
    let mut kazoo = tokio::task::block_in_place(|| Contender::kazoo(&connect, &path));

    assert_eq!(tokio::task::block_in_place(|| kazoo.send("acquire 5000")), "HELD");
    assert!(ours.lock(&key).try_acquire().await.expect("try").is_none(), "distlock ignored kazoo's holder");
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("release")), "RELEASED");

    let g = ours.lock(&key).try_acquire().await.expect("try").expect("free after kazoo's release");
    let kazoo_got = tokio::task::block_in_place(|| kazoo.send("acquire 1000"));
    assert_eq!(
        kazoo_got, "HELD",
        "kazoo now respects distlock's children: update the interoperability notes in lock-zk's docs"
    );
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("release")), "RELEASED");
    g.release().await.expect("release");
}
