#!/usr/bin/env bash
# The Kafka Streams peer of Rapport's benchmark (benches/kafka-streams-peer/):
# runs the same per-customer work as Rapport's engine over a topic of
# touchpoints, under exactly_once_v2 and then at_least_once, each with a fresh
# application id and output topic, and prints one Markdown table row per run
# (on stdout; build output, logs and action counts go to stderr).
#
#   benches/peer.sh <bootstrap> <input-topic> <records>
#
# The input topic must already hold <records> touchpoints (JSON, keyed by
# customer id). To fill one with simulated touchpoints:
#   java -cp benches/kafka-streams-peer/target/rapport-kafka-streams-peer.jar \
#       dev.rapport.peer.Generate <bootstrap> <topic> 200000 100000
# Extra JVM options (e.g. a heap limit): PEER_JAVA_OPTS="-Xmx1g" benches/peer.sh ...
set -euo pipefail

if (($# != 3)); then
    echo "usage: $0 <bootstrap> <input-topic> <records>" >&2
    exit 2
fi
bootstrap=$1
input=$2
records=$3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$here/kafka-streams-peer"
jar="$project/target/rapport-kafka-streams-peer.jar"

# Build once (Maven downloads the dependencies the first time); rebuild only
# when a source or the pom changed since.
if [[ ! -f $jar ]] || [[ -n $(find "$project/src" "$project/pom.xml" -newer "$jar" -print -quit) ]]; then
    echo "building $jar" >&2
    (cd "$project" && mvn -q package) >&2
fi

run_id="$(date +%s)-$$"
for guarantee in exactly_once_v2 at_least_once; do
    output="peer.actions.${guarantee}.${run_id}"
    java -cp "$jar" dev.rapport.peer.Topics create "$bootstrap" "$output" 4
    # shellcheck disable=SC2086 # PEER_JAVA_OPTS is a list of options.
    java ${PEER_JAVA_OPTS:-} -jar "$jar" "$bootstrap" "$input" "$output" "$guarantee" "$records"
    java -cp "$jar" dev.rapport.peer.Topics count "$bootstrap" "$output" >&2
done
