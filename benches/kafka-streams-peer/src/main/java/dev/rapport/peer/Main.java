package dev.rapport.peer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of Rapport's Kafka-to-Kafka benchmark.
 *
 * <pre>java -jar rapport-kafka-streams-peer.jar BOOTSTRAP INPUT OUTPUT GUARANTEE RECORDS</pre>
 *
 * Runs the topology over INPUT (already filled with RECORDS touchpoints) with a
 * fresh application id, waits until the application's committed offsets reach the
 * input's end offsets, and prints one Markdown table row: throughput from the
 * first record processed to all offsets committed, CPU per event over the same
 * window, and the process's peak RSS. Diagnostics go to stderr.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: Main BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC exactly_once_v2|at_least_once RECORDS");
            System.exit(2);
        }
        String bootstrap = args[0];
        String input = args[1];
        String output = args[2];
        String guarantee = args[3];
        long expected = Long.parseLong(args[4]);
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            System.err.println("guarantee must be exactly_once_v2 or at_least_once, not " + guarantee);
            System.exit(2);
        }

        String appId = "rapport-peer-" + guarantee.replace('_', '-') + "-" + System.currentTimeMillis();
        Path stateDir = Files.createTempDirectory("rapport-peer-state-");
        KafkaStreams streams = new KafkaStreams(topology(input, output), config(bootstrap, appId, guarantee, stateDir));
        AtomicReference<Throwable> failure = new AtomicReference<>();
        streams.setUncaughtExceptionHandler(e -> {
            failure.compareAndSet(null, e);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        int rc = 0;
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            Map<TopicPartition, Long> end = waitForInput(admin, input, expected);
            long records = end.values().stream().mapToLong(Long::longValue).sum();

            streams.start();
            while (JourneyProcessor.FIRST_NANOS.get() == 0) {
                check(streams, failure);
                Thread.sleep(1);
            }
            long started = JourneyProcessor.FIRST_NANOS.get();
            long cpuStart = JourneyProcessor.firstCpuNanos;

            // Done when every input partition's committed offset is at its end offset.
            while (!committedToEnd(admin, appId, end)) {
                check(streams, failure);
                Thread.sleep(5);
            }
            long elapsed = System.nanoTime() - started;
            long cpu = JourneyProcessor.cpuNanos() - cpuStart;
            double secs = elapsed / 1e9;

            System.out.printf(Locale.ROOT,
                    "| Kafka Streams 4.4 peer, %s, %d touchpoints, %d partitions, 2 stream threads | %.0f events/s, %.1f µs CPU per event, peak RSS %d MiB |%n",
                    guarantee, records, end.size(), records / secs, cpu / 1e3 / records, peakRssMiB());
            System.out.flush();
            System.err.printf(Locale.ROOT,
                    "peer %s: %.2f s, %.2f cores busy; actions: %d guide_link, %d recovery_offer, %d survey_request; %d malformed skipped%n",
                    appId, secs, cpu / (double) elapsed, JourneyProcessor.GUIDE_LINKS.sum(),
                    JourneyProcessor.RECOVERY_OFFERS.sum(), JourneyProcessor.SURVEY_REQUESTS.sum(),
                    JourneyProcessor.MALFORMED.sum());
        } catch (IllegalStateException e) {
            System.err.println("peer failed: " + e.getMessage());
            rc = 1;
        } finally {
            streams.close(Duration.ofSeconds(60));
            streams.cleanUp();
            deleteTree(stateDir);
        }
        System.exit(rc);
    }

    /** Source -> journeys processor (with its two stores) -> sink. */
    static Topology topology(String input, String output) {
        Topology t = new Topology();
        t.addSource("touchpoints", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), input);
        t.addProcessor("journeys", JourneyProcessor::new, "touchpoints");
        // Persistent (RocksDB) stores with changelog topics and record caching, the
        // Kafka Streams defaults for a store (cache size statestore.cache.max.bytes, 10 MiB).
        t.addStateStore(Stores.keyValueStoreBuilder(
                        Stores.persistentKeyValueStore(JourneyProcessor.PROFILES), Serdes.String(), Profile.SERDE)
                .withCachingEnabled()
                .withLoggingEnabled(Map.of()), "journeys");
        t.addStateStore(Stores.keyValueStoreBuilder(
                        Stores.persistentKeyValueStore(JourneyProcessor.WAITS), Serdes.Bytes(), Serdes.ByteArray())
                .withCachingEnabled()
                .withLoggingEnabled(Map.of()), "journeys");
        t.addSink("actions", output, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "journeys");
        return t;
    }

    static Properties config(String bootstrap, String appId, String guarantee, Path stateDir) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 2);
        // Rapport's default commit interval (Kafka Streams' own default is 100 ms
        // under exactly_once_v2 and 30 s under at_least_once).
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        // The input was written before the run: read it from the beginning.
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return p;
    }

    /** Waits until the input holds at least `expected` records; returns its end offsets. */
    static Map<TopicPartition, Long> waitForInput(Admin admin, String input, long expected) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(2);
        while (true) {
            var desc = admin.describeTopics(java.util.List.of(input)).allTopicNames().get().get(input);
            Map<TopicPartition, OffsetSpec> specs = desc.partitions().stream()
                    .collect(Collectors.toMap(pi -> new TopicPartition(input, pi.partition()), pi -> OffsetSpec.latest()));
            Map<TopicPartition, Long> end = new HashMap<>();
            admin.listOffsets(specs).all().get().forEach((tp, info) -> end.put(tp, info.offset()));
            long total = end.values().stream().mapToLong(Long::longValue).sum();
            if (total >= expected) {
                if (total > expected) System.err.printf("note: %s holds %d records, more than %d; all are processed%n", input, total, expected);
                return end;
            }
            if (System.nanoTime() > deadline) throw new IllegalStateException(input + " holds " + total + " records, expected " + expected);
            Thread.sleep(200);
        }
    }

    static boolean committedToEnd(Admin admin, String groupId, Map<TopicPartition, Long> end) throws Exception {
        Map<TopicPartition, OffsetAndMetadata> committed =
                admin.listConsumerGroupOffsets(groupId).partitionsToOffsetAndMetadata().get();
        for (var e : end.entrySet()) {
            OffsetAndMetadata c = committed.get(e.getKey());
            if (e.getValue() > 0 && (c == null || c.offset() < e.getValue())) return false;
        }
        return true;
    }

    private static void check(KafkaStreams streams, AtomicReference<Throwable> failure) {
        if (failure.get() != null) throw new IllegalStateException("stream thread died: " + failure.get(), failure.get());
        KafkaStreams.State s = streams.state();
        if (s == KafkaStreams.State.ERROR || s == KafkaStreams.State.PENDING_ERROR || s == KafkaStreams.State.NOT_RUNNING) {
            throw new IllegalStateException("Kafka Streams is " + s);
        }
    }

    /** Peak resident set size of this process (VmHWM), MiB. */
    static long peakRssMiB() {
        try (Stream<String> lines = Files.lines(Path.of("/proc/self/status"))) {
            return lines.filter(l -> l.startsWith("VmHWM:"))
                    .map(l -> Long.parseLong(l.replaceAll("[^0-9]", "")) / 1024)
                    .findFirst().orElse(0L);
        } catch (IOException e) {
            return 0;
        }
    }

    private static void deleteTree(Path dir) {
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException ignored) {
            // A temp directory left behind is harmless.
        }
    }
}
