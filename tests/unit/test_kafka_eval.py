"""The end-to-end runner's chunk producer is as durable as every other producer of the project: acks=all and
idempotent (it once produced with acks=1, which can lose an acknowledged chunk to a leader change)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from monitor.evaluation.kafka_replay import producer_kwargs
from monitor.settings import KafkaSettings, Settings


def test_the_producer_asks_for_acks_all_and_idempotence() -> None:
    kwargs = producer_kwargs(Settings(kafka=KafkaSettings(bootstrap="127.0.0.1:1", client_id="eval")))
    assert kwargs["acks"] == "all"
    assert kwargs["enable_idempotence"] is True
    assert kwargs["bootstrap_servers"] == "127.0.0.1:1" and kwargs["client_id"] == "eval"


async def test_the_constructed_producer_waits_for_every_in_sync_replica() -> None:
    # What aiokafka made of the arguments (no broker needed: nothing is sent before start()).
    producer = AIOKafkaProducer(**producer_kwargs(Settings(kafka=KafkaSettings(bootstrap="127.0.0.1:1"))))
    try:
        assert producer._sender._acks == -1  # "all" on the wire
        assert producer._txn_manager is not None  # only an idempotent producer has one
    finally:
        await producer.stop()
