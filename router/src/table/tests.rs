//! The table's rules without a network: prefixes, unregister matching, pruning, removal.

use super::*;

fn message(port: u16, uris: &[&str]) -> RegistryMessage {
    RegistryMessage {
        host: "10.0.0.1".into(),
        port,
        uris: uris.iter().map(|u| u.to_string()).collect(),
        app: format!("app-{port}"),
        private_instance_id: format!("inst-{port}"),
        ..RegistryMessage::default()
    }
}

fn table() -> Table {
    Table::new(Balancing::RoundRobin, Duration::from_secs(120))
}

fn port_for(t: &Table, host: &str, path: &str) -> Option<u16> {
    let route = t.lookup(host, path)?;
    match t.pick(&route, &[]) {
        Pick::Endpoint(lease) => Some(lease.endpoint().port),
        Pick::Exhausted => None,
    }
}

#[test]
fn the_longest_matching_prefix_wins() {
    let t = table();
    let now = Instant::now();
    t.register(&message(1, &["shop.example.com"]), now);
    t.register(&message(2, &["Shop.Example.com/api"]), now);
    t.register(&message(3, &["shop.example.com/api/v2"]), now);
    assert_eq!(port_for(&t, "shop.example.com", "/"), Some(1));
    assert_eq!(port_for(&t, "shop.example.com", "/apis"), Some(1));
    assert_eq!(port_for(&t, "shop.example.com", "/api"), Some(2));
    assert_eq!(port_for(&t, "shop.example.com", "/api/v1/x"), Some(2));
    assert_eq!(port_for(&t, "shop.example.com", "/api/v2/x"), Some(3));
    assert_eq!(port_for(&t, "other.example.com", "/"), None);
    assert_eq!(t.size(), (3, 3));
}

#[test]
fn a_path_route_alone_does_not_serve_other_paths() {
    let t = table();
    t.register(&message(2, &["a.example.com/api"]), Instant::now());
    assert_eq!(t.lookup("a.example.com", "/"), None);
    assert!(t.lookup("a.example.com", "/api/x").is_some());
}

#[test]
fn unregister_matches_host_port_and_uris() {
    let t = table();
    let now = Instant::now();
    t.register(&message(1, &["a.example.com", "b.example.com"]), now);
    t.register(&message(2, &["a.example.com"]), now);
    let mut other_host = message(1, &["a.example.com"]);
    other_host.host = "10.0.0.2".into();
    assert_eq!(t.unregister(&other_host), 0);
    assert_eq!(t.unregister(&message(1, &["a.example.com"])), 1);
    assert_eq!(port_for(&t, "a.example.com", "/"), Some(2));
    assert_eq!(port_for(&t, "b.example.com", "/"), Some(1));
    assert_eq!(t.unregister(&message(2, &["a.example.com"])), 1);
    assert_eq!(t.lookup("a.example.com", "/"), None);
    assert_eq!(t.size(), (1, 1));
}

#[test]
fn stale_endpoints_are_pruned_by_their_own_threshold() {
    let t = table();
    let t0 = Instant::now();
    let mut short = message(1, &["a.example.com"]);
    short.stale_threshold_in_seconds = 5;
    t.register(&short, t0);
    t.register(&message(2, &["a.example.com"]), t0);
    assert_eq!(t.prune(t0 + Duration::from_secs(6)), 1);
    assert_eq!(port_for(&t, "a.example.com", "/"), Some(2));
    t.freshen(t0 + Duration::from_secs(200));
    assert_eq!(t.prune(t0 + Duration::from_secs(300)), 0);
    assert_eq!(t.prune(t0 + Duration::from_secs(321)), 1);
    assert_eq!(t.size(), (0, 0));
}

#[test]
fn a_failed_dial_removes_the_endpoint_everywhere() {
    let t = table();
    let now = Instant::now();
    t.register(&message(1, &["a.example.com", "b.example.com/x"]), now);
    t.register(&message(2, &["a.example.com"]), now);
    assert_eq!(t.remove_endpoint("10.0.0.1", 1), 2);
    assert_eq!(t.lookup("b.example.com", "/x"), None);
    let route = t.lookup("a.example.com", "/").unwrap();
    let Pick::Endpoint(lease) = t.pick(&route, &[]) else {
        panic!("a.example.com lost its last endpoint");
    };
    let tried = vec![lease.endpoint().clone()];
    assert!(matches!(t.pick(&route, &tried), Pick::Exhausted));
}

#[test]
fn the_snapshot_lists_routes_with_their_endpoints() {
    let t = table();
    let now = Instant::now();
    t.register(&message(7, &["a.example.com/api"]), now);
    let snap = t.snapshot(now);
    let eps = &snap["a.example.com/api"];
    assert_eq!(eps[0].address, "10.0.0.1:7");
    assert_eq!(eps[0].app, "app-7");
    assert_eq!(eps[0].ttl_secs, 120);
}
