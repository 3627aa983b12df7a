//! The Kubernetes deployment in `deploy/kubernetes/` is valid and runs the
//! engine Rapport users get from `deploy/`: every manifest passes
//! kubernetes-validate (strict, pinned Kubernetes version), the ConfigMap carries
//! the shipped journeys verbatim and a configuration `rapport validate` accepts,
//! and the StatefulSet wires identity, state, probes and memory the way the
//! engine expects. Offline: no cluster and no Kafka broker.
//!
//! Needs Python 3 with kubernetes-validate (and its PyYAML); `deploy/setup.sh`
//! installs it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The Kubernetes version the manifests are checked against: the oldest one
/// Rapport supports. Raise it deliberately, not by accident.
const KUBERNETES_VERSION: &str = "1.30.0";

/// The engine's HTTP port (`http.listen` in the ConfigMap's rapport.toml).
const HTTP_PORT: u64 = 9464;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every manifest in `deploy/kubernetes/` (what `kubectl apply -f` applies).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kube_dir())
        .expect("deploy/kubernetes/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the ConfigMap, StatefulSet, Services and PodDisruptionBudget manifests in deploy/kubernetes/, found {files:?}"
    );
    files
}

fn lossy(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How to run kubernetes-validate here: `python3 -m kubernetes_validate`, else
/// the `kubernetes-validate` script. Fails the test when neither works.
fn kubernetes_validate() -> Command {
    let module = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    if matches!(&module, Ok(out) if out.status.success()) {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate"]);
        return cmd;
    }
    let script = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if matches!(&script, Ok(out) if out.status.success()) {
        return Command::new("kubernetes-validate");
    }
    panic!(
        "kubernetes-validate is not installed: run deploy/setup.sh, or \
         `python3 -m pip install kubernetes-validate` (add --break-system-packages \
         if pip refuses the system environment)"
    );
}

/// Every document of every manifest, as JSON, loaded by PyYAML (a dependency of
/// kubernetes-validate), keyed by "<kind>/<name>".
fn resources() -> BTreeMap<String, Value> {
    const LOAD: &str = r#"
import json, sys, yaml
docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
print(json.dumps(docs))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(LOAD)
        .args(manifests())
        .output()
        .expect("python3 is needed to read the Kubernetes manifests");
    assert!(
        out.status.success(),
        "loading the manifests with PyYAML failed (deploy/setup.sh installs it with kubernetes-validate):\n{}",
        lossy(&out)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from python3");
    let mut by_name = BTreeMap::new();
    for doc in docs {
        let key = format!(
            "{}/{}",
            doc["kind"].as_str().expect("every manifest has a kind"),
            doc["metadata"]["name"]
                .as_str()
                .expect("every manifest has a name")
        );
        assert!(
            by_name.insert(key.clone(), doc).is_none(),
            "{key} is defined twice"
        );
    }
    by_name
}

fn get<'a>(all: &'a BTreeMap<String, Value>, key: &str) -> &'a Value {
    all.get(key).unwrap_or_else(|| {
        panic!(
            "deploy/kubernetes/ has no {key}; it has {:?}",
            all.keys().collect::<Vec<_>>()
        )
    })
}

/// The ConfigMap's data: file name -> content.
fn config_data(all: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    get(all, "ConfigMap/rapport-config")["data"]
        .as_object()
        .expect("rapport-config has data")
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().unwrap_or_else(|| panic!("{k} is not a string"));
            (k.clone(), text.to_string())
        })
        .collect()
}

/// The shipped journeys: deploy/journeys/*.toml, file name -> content.
fn shipped_journeys() -> BTreeMap<String, String> {
    let dir = repo().join("deploy/journeys");
    let journeys: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    assert!(
        journeys.len() >= 4,
        "expected the shipped journeys in {dir:?}"
    );
    journeys
}

/// The StatefulSet's `rapport` container.
fn container(sts: &Value) -> &Value {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "rapport")
        .expect("a container named rapport")
}

/// The ConfigMap's rapport.toml, parsed.
fn rapport_toml(data: &BTreeMap<String, String>) -> toml::Table {
    let text = data
        .get("rapport.toml")
        .expect("rapport-config has rapport.toml");
    text.parse().expect("rapport.toml is TOML")
}

/// Kubernetes memory quantity ("768Mi", "1Gi") in MiB.
fn mebibytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("memory quantity {q}"));
    match unit {
        "Mi" => n,
        "Gi" => n * 1024,
        _ => panic!("memory quantity {q}: use Mi or Gi"),
    }
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let files = manifests();
    let out = kubernetes_validate()
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("running kubernetes-validate");
    let report = lossy(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate (Kubernetes {KUBERNETES_VERSION}, strict) rejected deploy/kubernetes/:\n{report}"
    );
    // Every file was actually checked, not skipped.
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            report.contains(&format!("{name} passed")),
            "kubernetes-validate did not report {name} as passed:\n{report}"
        );
    }
}

#[test]
fn configmap_journeys_are_deploy_journeys_verbatim_and_mounted() {
    let all = resources();
    let data = config_data(&all);
    let shipped = shipped_journeys();
    for (name, text) in &shipped {
        match data.get(name) {
            None => panic!(
                "deploy/journeys/{name} is missing from ConfigMap rapport-config (deploy/kubernetes/configmap.yaml): copy it in"
            ),
            Some(copy) => assert!(
                copy == text,
                "ConfigMap rapport-config's {name} differs from deploy/journeys/{name}: copy it again verbatim"
            ),
        }
    }
    let stale: Vec<&String> = data
        .keys()
        .filter(|k| *k != "rapport.toml" && !shipped.contains_key(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "ConfigMap rapport-config has journeys deploy/journeys/ does not: {stale:?}"
    );

    // Every key is mounted where rapport.toml's `journeys` glob finds it.
    let sts = get(&all, "StatefulSet/rapport");
    let volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "rapport-config")
        .expect("a volume from ConfigMap rapport-config");
    let items: BTreeMap<&str, &str> = volume["configMap"]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| (i["key"].as_str().unwrap(), i["path"].as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    for key in data.keys() {
        let want = if key == "rapport.toml" {
            key.clone()
        } else {
            format!("journeys/{key}")
        };
        assert_eq!(
            items.get(key.as_str()).copied(),
            Some(want.as_str()),
            "the StatefulSet's config volume must mount key {key} at /etc/rapport/{want}"
        );
    }
    let mount = container(sts)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the config volume is mounted");
    assert_eq!(mount["mountPath"], "/etc/rapport");
    let args: Vec<&str> = container(sts)["args"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert!(
        args.is_empty()
            || args
                .windows(2)
                .any(|w| w == ["--config", "/etc/rapport/rapport.toml"]),
        "the container must run with --config /etc/rapport/rapport.toml: {args:?}"
    );
}

#[test]
fn configmap_rapport_toml_passes_rapport_validate() {
    let all = resources();
    let data = config_data(&all);
    let cfg = rapport_toml(&data);
    assert_eq!(
        cfg.get("journeys")
            .and_then(|j| j.as_array())
            .map(|a| a.len()),
        Some(1),
        "rapport.toml must load the mounted journeys: journeys = [\"journeys/*.toml\"]"
    );
    assert_eq!(cfg["journeys"][0].as_str(), Some("journeys/*.toml"));
    assert_eq!(
        cfg["state"]["path"].as_str(),
        Some("/var/lib/rapport/state"),
        "state.path must be on the StatefulSet's volume"
    );
    assert_eq!(
        cfg["http"]["listen"].as_str(),
        Some(format!("0.0.0.0:{HTTP_PORT}").as_str()),
        "http.listen must be on all interfaces, so probes and Prometheus reach it"
    );
    let engine = cfg.get("engine").and_then(|e| e.as_table());
    assert!(
        engine.is_none_or(|e| !e.contains_key("instance_id")),
        "engine.instance_id must stay unset: every pod would get the same one; it comes from $RAPPORT_INSTANCE_ID"
    );
    let kafka = cfg.get("kafka").and_then(|k| k.as_table());
    assert!(
        kafka.is_none_or(|k| !k.contains_key("bootstrap_servers")),
        "kafka.bootstrap_servers must stay unset: it would override $RAPPORT_KAFKA_BOOTSTRAP"
    );

    // Lay the files out as the pod sees them under /etc/rapport and validate.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("journeys")).unwrap();
    for (key, text) in &data {
        let path = if key == "rapport.toml" {
            dir.path().join(key)
        } else {
            dir.path().join("journeys").join(key)
        };
        std::fs::write(path, text).unwrap();
    }
    let config = dir.path().join("rapport.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .arg("validate")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let report = lossy(&out);
    assert!(
        out.status.success(),
        "rapport validate refused ConfigMap rapport-config's rapport.toml:\n{report}"
    );
    // Every key but rapport.toml and the delivery policy holds one journey.
    let journeys = data.values().filter(|t| t.contains("[[journey]]")).count();
    assert!(
        report.contains(&format!("ok ({journeys} journeys)")),
        "rapport validate did not load all {journeys} journeys of the ConfigMap:\n{report}"
    );
}

#[test]
fn statefulset_identity_state_probes_and_memory() {
    let all = resources();
    let sts = get(&all, "StatefulSet/rapport");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(sts);

    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert!(
        c["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("rapport:")),
        "image: {}",
        c["image"]
    );

    // Stable instance id: the pod name, through the downward API.
    let env = c["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    let id = var("RAPPORT_INSTANCE_ID").expect("RAPPORT_INSTANCE_ID is set");
    assert_eq!(
        id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "RAPPORT_INSTANCE_ID must be the pod name (stable and distinct per pod)"
    );
    assert!(
        var("RAPPORT_KAFKA_BOOTSTRAP").is_some(),
        "RAPPORT_KAFKA_BOOTSTRAP is set"
    );

    // The headless Service governs the StatefulSet.
    let service = spec["serviceName"].as_str().expect("serviceName");
    let headless = get(&all, &format!("Service/{service}"));
    assert_eq!(headless["spec"]["clusterIP"], "None");

    // State on a per-pod volume.
    let claim = spec["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .expect("a volumeClaimTemplate");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == "/var/lib/rapport"),
        "the {claim} claim must be mounted at /var/lib/rapport: {mounts:?}"
    );

    // The HTTP port and the probes on it.
    let port = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["containerPort"] == HTTP_PORT)
        .expect("containerPort 9464");
    assert_eq!(port["name"], "metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} must GET {path}");
        assert!(
            get["port"] == "metrics" || get["port"] == HTTP_PORT,
            "{probe} must use port 9464: {}",
            get["port"]
        );
    }

    // Runs as the image's user.
    let uid = c["securityContext"]["runAsUser"]
        .as_u64()
        .or(pod["securityContext"]["runAsUser"].as_u64());
    assert_eq!(uid, Some(10001));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // Room for the final commit on SIGTERM.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= 30,
        "terminationGracePeriodSeconds {grace} is too short for the drain"
    );

    // Memory covers the README's rule for the ConfigMap's rapport.toml: Kafka
    // client buffers, RocksDB, the two profile caches and about 100 MiB for
    // the process and the interval's changed profiles.
    let cfg = rapport_toml(&config_data(&all));
    let setting = |table: &str, key: &str, default: i64| {
        cfg.get(table)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_integer())
            .unwrap_or(default) as u64
    };
    let rule = setting("kafka", "prefetch_mb", 64)
        + 2 * setting("kafka", "producer_buffer_mb", 32)
        + setting("state", "block_cache_mb", 64)
        + setting("state", "write_buffer_mb", 64)
        + setting("state", "profile_cache_mb", 32)
        + setting("state", "encoded_cache_mb", 64)
        + 100;
    let resources = &c["resources"];
    let request = mebibytes(
        resources["requests"]["memory"]
            .as_str()
            .expect("memory request"),
    );
    let limit = mebibytes(
        resources["limits"]["memory"]
            .as_str()
            .expect("memory limit"),
    );
    assert!(
        request >= rule && limit >= request,
        "memory request {request}Mi / limit {limit}Mi must cover the README's memory rule for rapport.toml: {rule}Mi"
    );

    // At most one pod down for voluntary disruptions, selecting these pods.
    let pdb = get(&all, "PodDisruptionBudget/rapport");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let labels = &spec["template"]["metadata"]["labels"];
    for selector in [
        &pdb["spec"]["selector"]["matchLabels"],
        &spec["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                &labels[k], v,
                "selector label {k} must match the pod template"
            );
        }
    }
}
