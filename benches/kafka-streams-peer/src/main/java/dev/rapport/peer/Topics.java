package dev.rapport.peer;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Topic chores for benches/peer.sh, with no Kafka CLI needed:
 *
 * <pre>
 * Topics create BOOTSTRAP TOPIC PARTITIONS   create the topic (nothing if it exists)
 * Topics count  BOOTSTRAP TOPIC              count committed records, per journey too
 * </pre>
 *
 * {@code count} reads with isolation.level=read_committed, so transaction markers
 * and aborted records of an exactly_once_v2 run are not counted.
 */
public final class Topics {
    private Topics() {}

    public static void main(String[] args) throws Exception {
        if (args.length >= 4 && args[0].equals("create")) {
            create(args[1], args[2], Integer.parseInt(args[3]));
        } else if (args.length >= 3 && args[0].equals("count")) {
            count(args[1], args[2]);
        } else {
            System.err.println("usage: Topics create BOOTSTRAP TOPIC PARTITIONS | Topics count BOOTSTRAP TOPIC");
            System.exit(2);
        }
    }

    static void create(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) -1))).all().get();
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) throw e;
        }
    }

    static void count(String bootstrap, String topic) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        try (var consumer = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = consumer.partitionsFor(topic).stream()
                    .map(pi -> new TopicPartition(topic, pi.partition())).toList();
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> end = consumer.endOffsets(parts);
            long total = 0;
            Map<String, Long> byJourney = new java.util.TreeMap<>();
            while (parts.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    total++;
                    try {
                        String journey = Json.MAPPER.readTree(r.value()).path("journey").asText("?");
                        byJourney.merge(journey, 1L, Long::sum);
                    } catch (java.io.IOException e) {
                        byJourney.merge("(not JSON)", 1L, Long::sum);
                    }
                }
            }
            System.out.println(topic + ": " + total + " records " + byJourney);
        }
    }
}
