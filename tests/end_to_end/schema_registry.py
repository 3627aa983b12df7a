"""A Schema Registry client Rapport did not write: confluent-kafka's Avro serde.

Run by tests/end_to_end/schema_registry.rs:

  schema_registry.py produce BOOTSTRAP REGISTRY_URL TOPIC WRITER_AVSC TOUCHPOINTS_JSON
      Produces each touchpoint (a JSON list of objects) with AvroSerializer under the
      writer schema WRITER_AVSC (registered under TOPIC-value), keyed by customer_id,
      with the Java client's partitioner (murmur2). Prints the writer schema's id.

  schema_registry.py consume BOOTSTRAP REGISTRY_URL TOPIC COUNT
      Reads COUNT committed records of TOPIC from the beginning with AvroDeserializer
      (writer schema fetched by the id in each record) and prints them as one JSON
      list, timestamps as epoch milliseconds.
"""

import datetime
import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(bootstrap, url, topic, writer_path, touchpoints_path):
    registry = SchemaRegistryClient({"url": url})
    with open(writer_path) as f:
        writer = f.read()
    with open(touchpoints_path) as f:
        touchpoints = json.load(f)
    serialize = AvroSerializer(registry, writer)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for tp in touchpoints:
        producer.produce(topic, key=tp["customer_id"], value=serialize(tp, ctx))
    if producer.flush(30) != 0:
        sys.exit("records were not delivered within 30 s")
    print(registry.get_latest_version(f"{topic}-value").schema_id)


def millis(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(f"{type(value)} is not JSON serializable")


def consume(bootstrap, url, topic, count):
    registry = SchemaRegistryClient({"url": url})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sr-check-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + 60
    while len(out) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consuming {topic}: {msg.error()}")
        ctx = SerializationContext(topic, MessageField.VALUE)
        out.append(deserialize(msg.value(), ctx))
    consumer.close()
    print(json.dumps(out, default=millis))


def main():
    if len(sys.argv) == 7 and sys.argv[1] == "produce":
        produce(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "consume":
        consume(*sys.argv[2:5], int(sys.argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
