"""The Kafka edge: the only package that imports ``confluent_kafka``.

- :mod:`ct_stream.kafka.clients`: producer/consumer/admin factories with tuned defaults
  and the topology's pass-through settings; ``ensure_topics``.
- :mod:`ct_stream.kafka.broker`: the embedded Tansu broker.
- :mod:`ct_stream.kafka.apache`: Apache Kafka from Maven Central, single KRaft node.
"""
