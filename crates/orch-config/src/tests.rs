use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> EnvOverrides {
    EnvOverrides::from_map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    )
}

#[test]
fn embedded_default_is_loopback_and_valid() {
    let c = Config::default();
    assert!(c.bind_addr().unwrap().ip().is_loopback());
    c.validate(false).unwrap();
    assert!(c.pools.is_empty());
}

#[test]
fn spec_example_parses() {
    let yaml = r#"
bind: 127.0.0.1:8080
auth: { token_env: AUTH_TOKEN }
queue: { capacity: 64, full_policy: drop-lru }
sessions: { ttl_ms: 600000, max_turns: 8 }
dev: { allow_cpu_inference: false }
pools:
  - id: qwen7b
    engine: llamacpp
    model: /models/qwen2.5-7b-instruct-q4_k_m.gguf
    engine_binary: llama-server
    devices: all
    replicas: 1
    slots: 4
    ctx: 8192
    flags: ["--flash-attn", "on"]
  - id: small
    model: /models/small.gguf
    devices: [1]
  - id: lan-vllm
    engine: vllm
    endpoint: http://10.0.0.20:8000
"#;
    let c = Config::from_str_for(Path::new("c.yaml"), yaml).unwrap();
    c.validate(false).unwrap();
    assert_eq!(c.queue.full_policy, FullPolicy::DropLru);
    assert_eq!(c.pools[0].devices, DeviceMask::default());
    assert_eq!(c.pools[1].devices, DeviceMask::Only(vec![1]));
    assert_eq!(c.pools[2].engine, EngineKind::Vllm);
}

#[test]
fn toml_parses() {
    let t = "bind = \"127.0.0.1:9000\"\n[[pools]]\nid = \"a\"\nmodel = \"/m.gguf\"\n";
    let c = Config::from_str_for(Path::new("c.toml"), t).unwrap();
    assert_eq!(c.pools[0].id, "a");
    assert_eq!(c.bind, "127.0.0.1:9000");
}

#[test]
fn typo_is_an_error_with_position() {
    let e = Config::from_str_for(Path::new("c.yaml"), "queue: { capacty: 3 }\n").unwrap_err();
    let m = e.to_string();
    assert!(m.contains("capacty"), "{m}");
    assert!(m.contains("c.yaml"), "{m}");
}

#[test]
fn lan_bind_without_token_refuses_naming_fix() {
    let mut c = Config::default();
    env(&[("LLORCH_ADDR", "0.0.0.0:8080")])
        .apply(&mut c)
        .unwrap();
    let m = c.validate(false).unwrap_err().to_string();
    assert!(m.contains("AUTH_TOKEN") && m.contains("127.0.0.1"), "{m}");
    c.validate(true).unwrap();
}

#[test]
fn env_model_makes_default_pool() {
    let mut c = Config::default();
    env(&[
        ("LLORCH_MODEL", "/m/tiny.gguf"),
        ("LLAMA_SERVER", "/bin/llama-server"),
        ("LLORCH_DEV_ALLOW_CPU_INFERENCE", "true"),
    ])
    .apply(&mut c)
    .unwrap();
    assert_eq!(c.pools.len(), 1);
    assert_eq!(
        c.pools[0].engine_binary.as_deref(),
        Some("/bin/llama-server")
    );
    assert!(c.dev.allow_cpu_inference);
}

#[test]
fn bad_bool_env_is_an_error() {
    let mut c = Config::default();
    let e = env(&[("AUTH_OPTIONAL", "maybe")])
        .apply(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("AUTH_OPTIONAL"));
}

#[test]
fn pool_validation_messages() {
    let mut c = Config::default();
    let mut p = PoolConfig::llamacpp("a", "/m.gguf", None);
    p.slots = 0;
    c.pools.push(p);
    assert!(c.validate(false).unwrap_err().to_string().contains("slots"));
    c.pools[0].slots = 2;
    c.pools.push(PoolConfig::llamacpp("a", "/m.gguf", None));
    assert!(c.validate(false).unwrap_err().to_string().contains("twice"));
    c.pools.pop();
    c.pools[0].startup_timeout_s = u64::MAX;
    assert!(c
        .validate(false)
        .unwrap_err()
        .to_string()
        .contains("startup_timeout_s"));
    c.pools[0].startup_timeout_s = 60;
    c.shutdown_grace_s = u64::MAX;
    assert!(c
        .validate(false)
        .unwrap_err()
        .to_string()
        .contains("shutdown_grace_s"));
    c.shutdown_grace_s = 10;
    type Field = fn(&mut Config) -> &mut u64;
    let timeouts: [(&str, Field); 2] = [
        ("write_stall_timeout_s", |c| &mut c.write_stall_timeout_s),
        ("idle_timeout_s", |c| &mut c.idle_timeout_s),
    ];
    for (name, field) in timeouts {
        let good = *field(&mut c);
        for bad in [0, u64::MAX] {
            *field(&mut c) = bad;
            assert!(c.validate(false).unwrap_err().to_string().contains(name));
        }
        *field(&mut c) = good;
    }
    c.pools[0].model = None;
    assert!(c
        .validate(false)
        .unwrap_err()
        .to_string()
        .contains("endpoint"));
}

#[test]
fn token_from_file() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("tok");
    std::fs::write(&f, "s3cret\n").unwrap();
    let mut c = Config::default();
    c.auth.token_file = Some(f);
    assert_eq!(env(&[]).token(&c).unwrap().as_deref(), Some("s3cret"));
    assert_eq!(
        env(&[("AUTH_TOKEN", "fromenv")])
            .token(&c)
            .unwrap()
            .as_deref(),
        Some("fromenv")
    );
}

#[test]
fn schema_generates() {
    let s = json_schema();
    assert!(s.to_string().contains("allow_cpu_inference"));
}

#[test]
fn on_demand_pools_split_and_device_limits_parse_with_defaults() {
    let yaml = r#"
placement:
  max_swap_wait_ms: 5000
  devices:
    - { index: 0, usable_mib: 20480 }
    - { index: 1, reserve_mib: 2048 }
pools:
  - id: coder
    model: /models/coder.gguf
    load: on_demand
    idle_unload_s: 0
  - id: big
    model: /models/big.gguf
    load: on_demand
    split: never
  - id: always
    model: /models/a.gguf
"#;
    let c = Config::from_str_for(Path::new("c.yaml"), yaml).unwrap();
    c.validate(false).unwrap();
    assert!(c.pools[0].on_demand());
    assert_eq!(c.pools[0].idle_unload_s, 0);
    assert_eq!(c.pools[1].idle_unload_s, 600, "default");
    assert_eq!(c.pools[1].split, SplitPolicy::Never);
    assert_eq!(c.pools[2].load, LoadPolicy::Always, "default");
    assert_eq!(c.pools[2].split, SplitPolicy::Auto, "default");
    assert_eq!(c.placement.max_swap_wait_ms, 5000);
    let gib = 1u64 << 30;
    // A 24 GiB card with 23 GiB free, capped at 20 GiB: 19 GiB usable.
    let cap = c.placement.limit(0).unwrap();
    assert_eq!(cap.usable_free(24 * gib, 23 * gib), 19 * gib);
    let reserve = c.placement.limit(1).unwrap();
    assert_eq!(reserve.usable_free(12 * gib, 12 * gib), 10 * gib);
    assert_eq!(reserve.usable_free(12 * gib, gib), 0, "saturates");
    assert!(c.placement.limit(2).is_none());
    assert_eq!(Config::default().placement.max_swap_wait_ms, 30_000);
}

#[test]
fn on_demand_and_device_limit_mistakes_are_named() {
    let check = |yaml: &str, want: &str| {
        let c = Config::from_str_for(Path::new("c.yaml"), yaml).unwrap();
        let m = c.validate(false).unwrap_err().to_string();
        assert!(m.contains(want), "{m}");
    };
    check(
        "pools:\n  - { id: e, endpoint: \"http://127.0.0.1:9\", load: on_demand }\n",
        "needs an engine llama-orch launches",
    );
    check(
        "placement: { devices: [{ index: 0, usable_mib: 1 }, { index: 0, reserve_mib: 1 }] }\n",
        "GPU 0 twice",
    );
    check(
        "placement: { devices: [{ index: 1 }] }\n",
        "neither usable_mib nor reserve_mib",
    );
    let e = Config::from_str_for(
        Path::new("c.yaml"),
        "pools:\n  - { id: a, model: m, load: lazy }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lazy"), "{e}");
}

#[test]
fn http_body_limit_and_cors_origins() {
    let c = Config::default();
    assert_eq!(c.http.max_body_bytes, 2 * 1024 * 1024);
    assert!(c.http.cors.allow_origins.is_empty());
    let ok = Config::from_str_for(
        Path::new("c.yaml"),
        "http: { max_body_bytes: 65536, cors: { allow_origins: [\"http://localhost:3000\", \"*\"] } }\n",
    )
    .unwrap();
    ok.validate(false).unwrap();
    assert_eq!(ok.http.max_body_bytes, 65536);
    for (yaml, want) in [
        ("http: { max_body_bytes: 10 }\n", "http.max_body_bytes"),
        (
            "http: { cors: { allow_origins: [\"localhost:3000\"] } }\n",
            "http.cors.allow_origins",
        ),
        (
            "http: { cors: { allow_origins: [\"http://a.example/path\"] } }\n",
            "no path",
        ),
    ] {
        let c = Config::from_str_for(Path::new("c.yaml"), yaml).unwrap();
        let m = c.validate(false).unwrap_err().to_string();
        assert!(m.contains(want), "{m}");
    }
}

#[test]
fn pool_kinds_parse_and_nonsense_is_refused() {
    let yaml = r#"
pools:
  - id: chat
    model: /models/c.gguf
  - id: emb
    model: /models/e.gguf
    kind: embedding
  - id: bge
    model: /models/bge.gguf
    kind: embedding
    pooling: cls
  - id: rr
    model: /models/r.gguf
    kind: rerank
"#;
    let c = Config::from_str_for(Path::new("c.yaml"), yaml).unwrap();
    c.validate(false).unwrap();
    assert_eq!(c.pools[0].kind, PoolKind::Chat, "default");
    assert_eq!(c.pools[1].kind, PoolKind::Embedding);
    assert_eq!(c.pools[1].pooling, None, "the launch recipe uses mean");
    assert_eq!(c.pools[2].pooling, Some(Pooling::Cls));
    assert_eq!(c.pools[3].kind, PoolKind::Rerank);
    let refused = |edit: fn(&mut PoolConfig), want: &str| {
        let mut c = c.clone();
        edit(&mut c.pools[3]);
        let e = c.validate(false).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    };
    refused(
        |p| p.pooling = Some(Pooling::Mean),
        "belongs to `kind: embedding`",
    );
    refused(
        |p| {
            p.engine = EngineKind::Tgi;
        },
        "engine `tgi` serves only generation",
    );
    refused(
        |p| {
            p.kind = PoolKind::Embedding;
            p.pooling = Some(Pooling::Last);
            p.model = None;
            p.endpoint = Some("http://127.0.0.1:9".into());
        },
        "leave `pooling` out",
    );
    let bad = "pools:\n  - {id: x, model: /m.gguf, kind: embeddings}\n";
    let e = Config::from_str_for(Path::new("c.yaml"), bad).unwrap_err();
    assert!(e.to_string().contains("chat"), "{e}");
}
