"""PyMongo against mongo-sim: connect with a replicaSet URI, write, tail the
oplog with a TAILABLE_AWAIT cursor, follow a change stream. Exits 0 on success;
any failed check raises and exits non-zero."""

import sys
import time

from pymongo import CursorType, MongoClient

DEADLINE = time.monotonic() + 60


def main(url):
    client = MongoClient(url, serverSelectionTimeoutMS=20000)
    assert client.admin.command("ping")["ok"] == 1
    hello = client.admin.command("hello")
    assert hello["setName"] == "rs0", hello

    coll = client.test.pysmoke
    coll.insert_one({"_id": 0})
    oplog = client.local["oplog.rs"]
    start = next(oplog.find().sort("$natural", -1).limit(1))["ts"]

    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_one({"_id": 1, "x": 1})
        coll.update_one({"_id": 1}, {"$set": {"x": 2}})
        coll.delete_one({"_id": 1})
        assert len(list(coll.find({}))) == 1

        cursor = oplog.find(
            {"ts": {"$gt": start}, "ns": "test.pysmoke"},
            cursor_type=CursorType.TAILABLE_AWAIT,
        ).max_await_time_ms(200)
        ops = []
        while len(ops) < 3 and cursor.alive and time.monotonic() < DEADLINE:
            for entry in cursor:
                ops.append(entry["op"])
        assert ops == ["i", "u", "d"], ops

        events = []
        while len(events) < 3 and time.monotonic() < DEADLINE:
            event = stream.try_next()
            if event is not None:
                events.append(event["operationType"])
        assert events == ["insert", "update", "delete"], events
        assert stream.resume_token is not None

    client.close()
    print("pymongo ok")


if __name__ == "__main__":
    main(sys.argv[1])
