#!/usr/bin/env bash
# Where the local broker's CPU goes: samples the broker JVM that
# deploy/kafka.sh started with async-profiler (fetched once from Maven
# Central) for a number of seconds, and prints the hottest frames, Java and
# native. Run it beside a benchmark, e.g. while `-- latency` measures:
#
#   benches/broker-profile.sh 10 > broker-profile.txt
#
# The latency bench reports the broker's CPU per request; this shows what a
# request costs it (socket writes, thread wake-ups, record validation, ...).
set -euo pipefail

seconds="${1:-10}"
version="${RAPPORT_ASYNC_PROFILER_VERSION:-4.1}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RAPPORT_CACHE:-$HOME/.cache/rapport}/async-profiler/$version"

pid_file="$(dirname "$("$here/../deploy/kafka.sh" logfile)")/kafka.pid"
[[ -f "$pid_file" ]] && pid="$(cat "$pid_file")" && kill -0 "$pid" 2>/dev/null || {
    echo "broker-profile.sh: no local broker running (deploy/kafka.sh start)" >&2
    exit 1
}

lib="$cache/linux-x64/libasyncProfiler.so"
if [[ ! -f "$lib" ]]; then
    mkdir -p "$cache"
    cat >"$cache/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rapport.local</groupId>
  <artifactId>async-profiler</artifactId>
  <version>$version</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>tools.profiler</groupId>
      <artifactId>async-profiler</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
EOF
    mvn -B -q --no-transfer-progress -f "$cache/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$cache/jar" >"$cache/mvn.log" 2>&1 || {
        cat "$cache/mvn.log" >&2
        exit 1
    }
    (cd "$cache" && unzip -o -q "jar/async-profiler-$version.jar" 'linux-x64/*')
fi

# The JDK's attach API loads the agent into the running broker (jcmd's
# JVMTI.agent_load splits the agent's options at '=').
cat >"$cache/Attach.java" <<'EOF'
import com.sun.tools.attach.VirtualMachine;

public class Attach {
    public static void main(String[] a) throws Exception {
        VirtualMachine vm = VirtualMachine.attach(a[0]);
        try {
            vm.loadAgentPath(a[1], a[2]);
        } finally {
            vm.detach();
        }
    }
}
EOF
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# itimer: CPU time of the whole process, without perf_event permissions.
java "$cache/Attach.java" "$pid" "$lib" "start,event=itimer,interval=1ms"
sleep "$seconds"
java "$cache/Attach.java" "$pid" "$lib" "stop,file=$out,flat=40,traces=0"
cat "$out"
