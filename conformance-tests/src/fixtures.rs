//! Server fixtures: real server processes on free loopback ports, in temporary directories,
//! stopped on drop; or, instead, servers you already run, named by environment variables.
//!
//! Each backend's tests ask for their server with a [`ServerSpec`] (the backend crates and
//! issues fill these in: redis-server, etcd, ZooKeeper, a DynamoDB emulator). The rules:
//!
//! - Only loopback addresses, only ports the kernel just handed out ([`free_port`]); a start
//!   that loses a port race is retried on fresh ports.
//! - A missing server binary or a server that does not come up is an **error** that says how
//!   to install it. A backend the run was told to test is never silently skipped.
//! - **External mode**: when `DISTLOCK_TEST_<BACKEND>_URL` is set (for example
//!   `DISTLOCK_TEST_REDIS_URL=redis://127.0.0.1:6379`), tests use that server instead of
//!   starting one ([`external_url`]); it must be reachable, or the run fails.
//! - Fault tools: [`ServerProcess::pause`] (SIGSTOP), [`ServerProcess::resume`] (SIGCONT),
//!   [`ServerProcess::kill`] (SIGKILL) and [`ServerProcess::restart`] (same ports, same
//!   data directory).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// An error starting or reaching a test server, with what to do about it.
#[derive(Debug)]
pub struct FixtureError(pub String);

impl std::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FixtureError {}

/// A port on 127.0.0.1 that was free a moment ago (the kernel picked it).
///
/// # Errors
/// When no socket can be bound on loopback.
pub fn free_port() -> Result<u16, FixtureError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| FixtureError(format!("cannot bind a loopback port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| FixtureError(format!("cannot read a bound port: {e}")))
}

/// The environment variable that names an external server for `backend`:
/// `DISTLOCK_TEST_<BACKEND>_URL`, upper-cased.
pub fn external_var(backend: &str) -> String {
    format!("DISTLOCK_TEST_{}_URL", backend.to_ascii_uppercase().replace('-', "_"))
}

/// The URL of an external server for `backend`, when the environment names one.
pub fn external_url(backend: &str) -> Option<String> {
    std::env::var(external_var(backend)).ok().filter(|v| !v.trim().is_empty())
}

/// Finds an executable on `PATH` or in `extra_dirs`.
///
/// # Errors
/// A message naming the binary and how to install it (`install_hint`), and the environment
/// variable that points the tests at an external server instead.
pub fn find_binary(
    name: &str,
    extra_dirs: &[&str],
    install_hint: &str,
    backend: &str,
) -> Result<PathBuf, FixtureError> {
    let path_dirs =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let candidates = path_dirs.into_iter().chain(extra_dirs.iter().map(PathBuf::from));
    for dir in candidates {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(FixtureError(format!(
        "`{name}` was not found on PATH{}; install it ({install_hint}) or set {} to a running server",
        if extra_dirs.is_empty() { String::new() } else { format!(" or in {}", extra_dirs.join(", ")) },
        external_var(backend)
    )))
}

/// Waits until something accepts TCP connections at `addr`.
///
/// # Errors
/// When nothing does before `timeout`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), FixtureError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(FixtureError(format!(
                    "nothing accepted connections at {addr} within {timeout:?}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// How to start one server process.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// A name for messages and log files, e.g. `"redis-1"`.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The port that accepts connections once the server is ready.
    pub ready_port: u16,
    /// How long the server may take to come up.
    pub ready_timeout: Duration,
}

/// A running server process with its own temporary directory. Killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    spec: ServerSpec,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl ServerProcess {
    /// Starts the server in `dir` (its data and log directory) and waits until its port
    /// accepts connections.
    ///
    /// # Errors
    /// When it cannot be spawned, exits, or does not come up in time; the message carries the
    /// end of its log.
    pub async fn start(spec: ServerSpec, dir: &Path) -> Result<Self, FixtureError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| FixtureError(format!("cannot create {}: {e}", dir.display())))?;
        let mut me = Self { spec, dir: dir.to_owned(), child: None, paused: false };
        me.spawn().await?;
        Ok(me)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.spec.name))
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn spawn(&mut self) -> Result<(), FixtureError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| FixtureError(format!("cannot open log for {}: {e}", self.spec.name)))?;
        let log2 = log.try_clone().map_err(|e| FixtureError(format!("cannot dup log: {e}")))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| {
            FixtureError(format!("cannot start {} ({}): {e}", self.spec.name, self.spec.program.display()))
        })?;
        self.child = Some(child);
        self.paused = false;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.spec.ready_port));
        let ready = wait_for_port(addr, self.spec.ready_timeout);
        tokio::pin!(ready);
        loop {
            tokio::select! {
                r = &mut ready => {
                    return r.map_err(|e| FixtureError(format!("{} did not come up: {e}\n--- log ---\n{}", self.spec.name, self.log_tail())));
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(c) = self.child.as_mut() {
                        if let Ok(Some(status)) = c.try_wait() {
                            return Err(FixtureError(format!("{} exited with {status} before it was ready\n--- log ---\n{}", self.spec.name, self.log_tail())));
                        }
                    }
                }
            }
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.spec.ready_port
    }

    /// Its data and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn signal(&self, sig: rustix::process::Signal) -> Result<(), FixtureError> {
        let pid = self.pid().ok_or_else(|| FixtureError(format!("{} is not running", self.spec.name)))?;
        let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| FixtureError("bad pid".into()))?;
        rustix::process::kill_process(pid, sig)
            .map_err(|e| FixtureError(format!("cannot signal {}: {e}", self.spec.name)))
    }

    /// Freezes the server (SIGSTOP): it keeps its sockets but answers nothing.
    ///
    /// # Errors
    /// When it is not running.
    pub fn pause(&mut self) -> Result<(), FixtureError> {
        self.signal(rustix::process::Signal::STOP)?;
        self.paused = true;
        Ok(())
    }

    /// Thaws a paused server (SIGCONT).
    ///
    /// # Errors
    /// When it is not running.
    pub fn resume(&mut self) -> Result<(), FixtureError> {
        self.signal(rustix::process::Signal::CONT)?;
        self.paused = false;
        Ok(())
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.paused = false;
    }

    /// Kills the server and starts it again with the same arguments, ports and directory.
    ///
    /// # Errors
    /// As [`ServerProcess::start`].
    pub async fn restart(&mut self) -> Result<(), FixtureError> {
        self.kill().await;
        self.spawn().await
    }

    /// Whether it runs (it may be paused).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.paused {
            let _ = self.signal(rustix::process::Signal::CONT);
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
            // Reap without blocking: tokio's orphan reaper collects it.
        }
    }
}

/// A temporary directory for fixtures, removed on drop.
///
/// # Errors
/// When no temporary directory can be made.
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, FixtureError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| FixtureError(format!("cannot create a temporary directory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        let p = free_port().expect("port");
        assert_ne!(p, 0);
    }

    #[test]
    fn missing_binary_is_an_error_that_says_what_to_do() {
        let e = find_binary("no-such-server-binary-xyz", &[], "apt-get install xyz", "redis").unwrap_err();
        assert!(e.0.contains("apt-get install xyz"), "{e}");
        assert!(e.0.contains("DISTLOCK_TEST_REDIS_URL"), "{e}");
    }

    #[tokio::test]
    async fn a_process_fixture_starts_pauses_resumes_restarts_and_stops() {
        // python3 is on every machine this project builds on; it stands in for a server.
        let Ok(py) = find_binary("python3", &[], "apt-get install python3", "python") else {
            panic!("python3 is required by the fixture self-test");
        };
        let port = free_port().expect("port");
        let dir = temp_dir("fixture-selftest").expect("dir");
        let spec = ServerSpec {
            name: "echo".into(),
            program: py,
            args: vec!["-c".into(), format!("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\nwhile True: time.sleep(1)")],
            env: vec![],
            ready_port: port,
            ready_timeout: Duration::from_secs(20),
        };
        let mut s = ServerProcess::start(spec, dir.path()).await.expect("start");
        assert!(s.is_running());
        s.pause().expect("pause");
        s.resume().expect("resume");
        s.restart().await.expect("restart");
        assert!(s.is_running());
        s.kill().await;
        assert!(!s.is_running());
    }
}
