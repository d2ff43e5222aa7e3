//! The URL forms, their errors, and what never shows.

use super::*;

fn url_err(url: &str) -> String {
    let e = if url.starts_with("redlock") {
        url.parse::<RedlockOptions>().err()
    } else {
        url.parse::<RedisOptions>().err()
    }
    .expect(url);
    assert!(matches!(e, Error::InvalidConfig(_)), "{url}: {e:?}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("hunter2"), "{url}: password echoed: {shown}");
    e.to_string()
}

#[test]
fn redis_urls_parse_to_the_options_the_builders_make() {
    let o: RedisOptions = "redis://h".parse().unwrap();
    assert_eq!(o, RedisOptions::new("h"));
    assert_eq!(o.host_port().unwrap(), ("h".to_owned(), DEFAULT_PORT));
    let o: RedisOptions =
        "redis://app:s%2Fcret@127.0.0.1:6380/2?prefix=svc:&timeout=1s&connect_timeout=3s&namespace=x"
            .parse()
            .unwrap();
    let built = RedisOptions::new("127.0.0.1:6380")
        .credentials("app", "s/cret")
        .database(2)
        .prefix("svc:")
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(3));
    assert_eq!(o, built);
    assert_eq!(o.describe(), "redis://127.0.0.1:6380/2");
    // A password alone is the default user's.
    let o: RedisOptions = "redis://:pw@h/".parse().unwrap();
    assert_eq!(o, RedisOptions::new("h").credentials("", "pw"));
    assert_eq!((o.user.as_deref(), o.db), (None, 0));
    let o: RedisOptions = "redis://[::1]:6380".parse().unwrap();
    assert_eq!(o.host_port().unwrap(), ("::1".to_owned(), 6380));
    let o: RedisOptions = "rediss://h".parse().unwrap();
    assert_eq!(o.tls, Some(TlsOptions::new()), "rediss:// alone trusts the system's roots");
    assert_eq!(o.describe(), "rediss://h");
}

#[test]
fn rediss_reads_the_ca_and_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (file("ca.pem", "CA"), file("c.pem", "CERT"), file("k.pem", "PRIVATE KEY"));
    let o: RedisOptions = format!("rediss://h?ca_file={ca}&cert_file={cert}&key_file={key}").parse().unwrap();
    assert_eq!(o.tls, Some(TlsOptions::new().ca("CA").identity("CERT", "PRIVATE KEY")));
    let shown = format!("{o:?}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
    let o: RedlockOptions = format!("redlock://a,b,c?ca_file={ca}").parse().unwrap();
    assert!(o.nodes().iter().all(|n| n.tls == Some(TlsOptions::new().ca("CA"))), "ca_file= implies TLS");
}

#[test]
fn redlock_urls_set_every_node() {
    let o: RedlockOptions =
        "redlock://u:pw@h1,h2:7000,[::1]/1?tls=true&timeout=300ms&prefix=p".parse().unwrap();
    let built = RedlockOptions::new(["h1", "h2:7000", "[::1]"].map(RedisOptions::new))
        .credentials("u", "pw")
        .database(1)
        .tls(TlsOptions::new())
        .request_timeout(Duration::from_millis(300))
        .prefix("p");
    assert_eq!(o, built);
    let o: RedlockOptions = "redlock://h1,h2,h3".parse().unwrap();
    assert!(o.nodes().iter().all(|n| n.tls.is_none() && n.request_timeout.is_none()));
}

#[test]
fn bad_urls_point_at_the_part_and_hide_passwords() {
    for (url, expect) in [
        ("redis://u:hunter2@h1,h2", "takes one host (use redlock://"),
        ("redis://u:hunter2@", "needs host"),
        ("redlock://u:hunter2@h1,h2", "at least 3 hosts"),
        ("redis://u:hunter2@h?bogus=1", "unknown option 'bogus'"),
        ("redlock://u:hunter2@a,b,c?ssl=1", "unknown option 'ssl'"),
        ("redis://u:hunter2@h/x", "path '/x' is not valid for Redis"),
        ("redis://u:hunter2@h/-1", "path '/-1'"),
        ("redis://u:hunter2@h?ca_file=/ca.pem", "needs rediss://"),
        ("redis://u:hunter2@h?tls=true", "needs rediss://"),
        ("rediss://u:hunter2@h?ca_file=/nonexistent/ca.pem", "cannot read the TLS CA file"),
        ("rediss://u:hunter2@h?cert_file=/c.pem", "go together"),
        ("redlock://u:hunter2@a,b,c?tls=false&ca_file=/x", "contradicts"),
        ("redis://u@h", "needs both a user and a password"),
        ("redis://u:hunter2@h?prefix=a{b", "must not contain '{'"),
        ("redis://u:hunter2@h?timeout=soon", "option timeout"),
        ("redis://u:hunter2@h:0", "port '0'"),
        ("redis://u:hunter2@0.0.0.0", "wildcard"),
        ("redis://u:hunter2@h%5Ex", "not a host name"),
        ("redlock://u:hunter2@a,b:6379,b", "'b' is listed twice"),
        ("etcd://u:hunter2@h", "scheme 'etcd' is not one of redis://, rediss://"),
    ] {
        let msg = url_err(url);
        assert!(msg.contains(expect), "{url}: {msg}");
    }
    let msg = url_err("redis://u:hunter2@h?prefix=a{b");
    assert!(msg.contains("distlock URL 'redis://u:***@h"), "validation errors name the URL: {msg}");
}

#[test]
fn addresses_and_validation() {
    for (addr, expect) in [
        ("::1", "must be bracketed"),
        ("[::1", "needs its ']'"),
        ("[::1]x", "':PORT'"),
        ("[nope]", "not an IPv6 address"),
        ("h:65536", "port '65536'"),
        (":6379", "no host"),
        ("", "no host"),
    ] {
        let e = RedisOptions::new(addr).validate().unwrap_err().to_string();
        assert!(e.contains(expect) && e.contains("redis address"), "{addr}: {e}");
    }
    assert_eq!(RedisOptions::new("[::1]").host_port().unwrap(), ("::1".to_owned(), 6379));
    let bad = |o: RedisOptions| o.validate().unwrap_err().to_string();
    assert!(bad(RedisOptions::new("h").database(-1)).contains("negative"));
    assert!(bad(RedisOptions::new("h").request_timeout(Duration::ZERO)).contains("greater than zero"));
    assert!(bad(RedisOptions::new("h").connect_timeout(Duration::ZERO)).contains("greater than zero"));
    let nodes = |n: usize| (0..n).map(|i| RedisOptions::new(format!("h{i}"))).collect::<Vec<_>>();
    assert!(RedlockOptions::new(nodes(2)).validate().unwrap_err().to_string().contains("at least 3"));
    RedlockOptions::new(nodes(3)).validate().unwrap();
    let mut mixed = nodes(3);
    mixed[1] = mixed[1].clone().prefix("other:");
    let e = RedlockOptions::new(mixed).validate().unwrap_err().to_string();
    assert!(e.contains("same key prefix"), "{e}");
}

#[test]
fn passwords_never_show() {
    let o: RedisOptions = "redis://app:s3cret@127.0.0.1:6379/2".parse().unwrap();
    let rl: RedlockOptions = "redlock://app:s3cret@a,b,c".parse().unwrap();
    let shown = format!("{o:?} {rl:?} {:?}", RedisOptions::new("h").credentials("", "hunter2"));
    assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("user: Some(\"app\")"), "{shown}");
}

#[test]
fn wait_replicas_in_urls() {
    let o: RedisOptions = "redis://h?wait_replicas=1".parse().unwrap();
    assert_eq!(o, RedisOptions::new("h").wait_replicas(1, DEFAULT_WAIT_TIMEOUT));
    let o: RedisOptions = "rediss://h?wait_replicas=2&wait_timeout=50ms".parse().unwrap();
    assert_eq!(o, RedisOptions::new("h").tls(TlsOptions::new()).wait_replicas(2, Duration::from_millis(50)));
    let o: RedlockOptions = "redlock://a,b,c?wait_replicas=1".parse().unwrap();
    assert!(o.nodes.iter().all(|n| n.wait_replicas == 1), "{o:?}");
    for (url, expect) in [
        ("redis://:hunter2@h?wait_replicas=many", "'many' is not a number of replicas"),
        ("redis://:hunter2@h?wait_replicas=-1", "is not a number of replicas"),
        ("redis://:hunter2@h?wait_replicas=1&wait_timeout=0s", "greater than zero"),
        ("redis://:hunter2@h?wait_timeout=soon", "wait_timeout"),
    ] {
        let e = url_err(url);
        assert!(e.contains(expect), "{url}: {e}");
    }
}

#[test]
fn sentinel_urls() {
    let o: RedisOptions = "redis+sentinel://s1,s2:26380/mymaster".parse().unwrap();
    assert_eq!(o, RedisOptions::sentinel(["s1", "s2:26380"], "mymaster"));
    assert_eq!(o.describe(), "redis+sentinel://s1,s2:26380/mymaster");
    let o: RedisOptions =
        "rediss+sentinel://app:hunter2@[::1]:26379/main/3?prefix=p:&wait_replicas=1".parse().unwrap();
    let want = RedisOptions::sentinel(["[::1]:26379"], "main")
        .credentials("app", "hunter2")
        .database(3)
        .prefix("p:")
        .tls(TlsOptions::new())
        .wait_replicas(1, DEFAULT_WAIT_TIMEOUT);
    assert_eq!(o, want);
    assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
    for (url, expect) in [
        ("redis+sentinel://:hunter2@s1", "needs the master's name"),
        ("redis+sentinel://:hunter2@s1/", "needs the master's name"),
        ("redis+sentinel://:hunter2@s1/m/x", "expected /DB"),
        ("redis+sentinel://:hunter2@s1:0/m", "port '0'"),
        ("redis+sentinel://:hunter2@s1/m?ca_file=/x", "needs rediss+sentinel://"),
    ] {
        let e = url_err(url);
        assert!(e.contains(expect), "{url}: {e}");
    }
    let e = RedisOptions::sentinel(Vec::<String>::new(), "m").validate().unwrap_err();
    assert!(e.to_string().contains("no sentinel"), "{e}");
    let e = RedisOptions::sentinel(["s1"], "two words").validate().unwrap_err();
    assert!(e.to_string().contains("not a master name"), "{e}");
    let redlock = RedlockOptions::new([
        RedisOptions::sentinel(["s1"], "m"),
        RedisOptions::new("b"),
        RedisOptions::new("c"),
    ]);
    assert!(redlock.validate().unwrap_err().to_string().contains("not supported under Redlock"));
}

/// A user and password written into a hand-built address never show in Debug or errors.
#[test]
fn credentials_in_a_hand_built_address_never_show() {
    for address in ["app:s3cret@[::1", "app:s3cret@h", "app:s3/cret@h:6379"] {
        let o = RedisOptions::new(address);
        assert!(!format!("{o:?}").contains("s3"), "{o:?}");
        let e = o.validate().unwrap_err().to_string();
        assert!(!e.contains("s3"), "{e}");
    }
}

#[test]
fn a_cluster_clients_node_name_is_read_back_as_an_address() {
    assert_eq!(join_address("10.0.0.1:7000"), "10.0.0.1:7000");
    assert_eq!(join_address("::1:7000"), "[::1]:7000");
    assert_eq!(split_address(&join_address("fe80::2:7001"), 6379), Ok(("fe80::2".into(), 7001)));
}
