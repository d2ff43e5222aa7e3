//! Contender processes of other clients (Apache Curator's recipes, kazoo's `Lock`) driven over
//! stdin, one command a line, one answer a line.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use conformance_tests::fixtures::zk::ZOOKEEPER_JAR;

/// What the Java contenders need: Debian's Curator and ZooKeeper jars.
pub const CURATOR_JARS: &[&str] = &[
    "/usr/share/java/curator-client.jar",
    "/usr/share/java/curator-framework.jar",
    "/usr/share/java/curator-recipes.jar",
    ZOOKEEPER_JAR,
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/guava.jar",
    "/usr/share/java/slf4j-api.jar",
];

/// A contender process.
pub struct Contender {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Compiles `tests/java/<class>.java` (once per test binary and class) and returns the class
/// path to run it with.
fn compiled(class: &str) -> String {
    for jar in CURATOR_JARS {
        assert!(
            std::path::Path::new(jar).is_file(),
            "{jar} is missing: install Debian's libcurator-recipes-java and zookeeper (bash scripts/test.sh does)"
        );
    }
    let classes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("java-{class}"));
    let cp = CURATOR_JARS.join(":");
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !classes.join(format!("{class}.class")).is_file() {
        std::fs::create_dir_all(&classes).expect("class dir");
        let src = format!("{}/tests/java/{class}.java", env!("CARGO_MANIFEST_DIR"));
        let javac = Command::new("javac")
            .args(["-d", &classes.display().to_string(), "-cp", &cp, &src])
            .status()
            .expect("javac: install a JDK (default-jdk-headless; bash scripts/test.sh does)");
        assert!(javac.success(), "javac {src} failed");
    }
    format!("{}:{cp}", classes.display())
}

impl Contender {
    /// Curator's `InterProcessMutex` on `path`, from tests/java/CuratorContender.java.
    pub fn curator(connect: &str, path: &str) -> Self {
        let mut cmd = Command::new("java");
        cmd.args(["-cp", &compiled("CuratorContender"), "CuratorContender", connect, path]);
        Self::spawn(cmd)
    }

    /// One of Curator's recipes on `path`, from tests/java/CuratorRecipes.java: `recipe` is
    /// `semaphore N`, `read`, `write` or `latch ID` (see that file for its commands).
    pub fn curator_recipe(connect: &str, path: &str, recipe: &[&str]) -> Self {
        let mut cmd = Command::new("java");
        cmd.args(["-cp", &compiled("CuratorRecipes"), "CuratorRecipes", connect, path]).args(recipe);
        Self::spawn(cmd)
    }

    /// kazoo's `Lock`, from the virtualenv the test command makes, ordering also the
    /// children that match `extra_lock_patterns` (comma-separated; none when empty).
    pub fn kazoo(connect: &str, path: &str, extra_lock_patterns: &str) -> Self {
        let python =
            conformance_tests::fixtures::test_python("DISTLOCK_PYTHON").unwrap_or_else(|e| panic!("{e}"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kazoo_contender.py");
        let mut cmd = Command::new(&python);
        cmd.args([script, connect, path, extra_lock_patterns]);
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

    /// The next line the contender prints.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read from the contender");
        l.trim().to_owned()
    }

    /// Sends one command and returns the answer.
    pub fn send(&mut self, cmd: &str) -> String {
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
