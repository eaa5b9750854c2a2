# Known-answer vectors of gatehouse-audit/1, computed with nothing but the standard library.
# Prints one line per event: "<index> <link hex>". Also in docs/AUDIT.md ("Hash chain").
import hashlib, json, struct

def cj(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

def lp(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b

def canonical(e):
    return (b"GHA1" + struct.pack(">QQ", e["index"], e["position"])
            + lp(e["aggregate_type"]) + lp(e["aggregate_id"]) + struct.pack(">Q", e["sequence"])
            + lp(e["event_type"]) + lp(e["event_version"])
            + lp(cj(e["payload"])) + lp(cj(e["metadata"])) + lp(e["recorded_at"]))

events = [
    dict(index=1, position=1, aggregate_type="organisation", aggregate_id="acme", sequence=1,
         event_type="OrganisationCreated", event_version="1",
         payload={"slug": "acme", "name": "Acme"},
         metadata={"correlation_id": "c-1", "actor": "user:alice"},
         recorded_at="2026-11-29T02:20:17.145000Z"),
    dict(index=2, position=2, aggregate_type="organisation", aggregate_id="acme", sequence=2,
         event_type="MemberInvited", event_version="1",
         payload={"role": "admin", "email": "bob@example.com", "quota": -5, "big": 18446744073709551615},
         metadata={"actor": "user:alice"},
         recorded_at="2026-11-29T02:20:18.000001Z"),
    dict(index=3, position=5, aggregate_type="publishing", aggregate_id="acme/portal", sequence=1,
         event_type="RequestSubmitted", event_version="2",
         payload={"title": "Caf\u00e9 \u2615 \"quoted\"\n\u0001", "tags": ["a", "b"],
                  "nested": {"z": 1, "a": {"y": None, "x": True}}},
         metadata={},
         recorded_at="2026-11-29T02:21:00.000000Z"),
]

link = bytes(32)  # link_0, the genesis link
for e in events:
    link = hashlib.sha256(link + canonical(e)).digest()
    print(e["index"], link.hex())
