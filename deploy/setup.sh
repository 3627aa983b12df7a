#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, test and demo Rapport:
# the C/C++ headers the bundled RocksDB and librdkafka builds need, kcat (the
# interop tests' Kafka client), a JRE and Maven (the local broker comes from Maven
# Central), Python's fastavro (the schema checks), Segment's and RudderStack's
# Python SDKs (the collector's tests), kubernetes-validate (the
# Kubernetes manifest checks) and Prometheus with promtool (the checks of the
# alert rules and dashboard). Safe to run repeatedly.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libclang-dev libcurl4-openssl-dev kcat cmake g++ make pkg-config zlib1g-dev; do
  have_pkg "$pkg" || need+=("$pkg")
done
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
# curl and unzip: deploy/registry.sh (the local Apicurio Registry).
for pkg in curl unzip; do have_pkg "$pkg" || need+=("$pkg"); done
# promtool and a Prometheus server, for the checks of deploy/prometheus.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)

if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "rapport setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "rapport setup: installing ${need[*]}" >&2
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "rapport setup: missing packages; run: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "rapport setup: cargo not found; install Rust from your distribution or rustup (1.88 or newer)" >&2
  exit 1
fi

if ! python3 -c 'import fastavro' 2>/dev/null; then
  echo "rapport setup: installing fastavro" >&2
  python3 -m pip install --quiet fastavro 2>/dev/null || python3 -m pip install --quiet --break-system-packages fastavro
fi

# Segment's and RudderStack's Python SDKs, the collector's tests' clients.
if ! python3 -c 'import segment.analytics, rudderstack.analytics' 2>/dev/null; then
  echo "rapport setup: installing segment-analytics-python and rudder-sdk-python" >&2
  python3 -m pip install --quiet segment-analytics-python rudder-sdk-python 2>/dev/null || python3 -m pip install --quiet --break-system-packages segment-analytics-python rudder-sdk-python
fi

if ! command -v kubernetes-validate >/dev/null 2>&1 && ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "rapport setup: installing kubernetes-validate" >&2
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi

# confluent-kafka with its Schema Registry Avro serde: the client we did not
# write in the Schema Registry test (tests/end_to_end/schema_registry.rs).
if ! python3 -c 'from confluent_kafka.schema_registry import SchemaRegistryClient; from confluent_kafka.schema_registry.avro import AvroSerializer, AvroDeserializer' 2>/dev/null; then
  echo "rapport setup: installing confluent-kafka[avro,schemaregistry]" >&2
  python3 -m pip install --quiet 'confluent-kafka[avro,schemaregistry]==2.16.1' 2>/dev/null || python3 -m pip install --quiet --break-system-packages 'confluent-kafka[avro,schemaregistry]==2.16.1'
fi
