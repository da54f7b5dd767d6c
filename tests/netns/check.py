#!/usr/bin/env python3
"""Checks a netns test cluster run from the nodes' stdout logs and metrics.

  check.py scrape URL              print the body of a metrics scrape (run inside a namespace)
  check.py online URL N            exit 0 if the node's gossip_peer_online shows N peers up
  check.py settled WORK            exit 0 if every live node's sends have all completed
  check.py converged FILE K N      exit 0 if FILE's (K+1)-th convergence line says reached=N
                                   with nobody missing; 2 if there is none yet
  check.py final WORK              the whole verdict, with a summary; exit 1 on any failure

Logs are WORK/out_<node>.<incarnation>.log; an incarnation killed with SIGKILL is listed in
WORK/killed (one log name per line): its own sends cannot complete and are not counted.
"""

import glob
import os
import re
import sys
import urllib.request
from collections import Counter, defaultdict

FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def fields(line):
    return {k: v.strip('"') for k, v in FIELD.findall(line)}


def logs(work):
    return sorted(glob.glob(os.path.join(work, "out_*.log")))


def killed(work):
    try:
        with open(os.path.join(work, "killed")) as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def parse(path):
    """Per log: sends, completions, broadcasts, convergences, deliveries, and other marks."""
    log = {
        "sent": {}, "completed": defaultdict(list), "broadcast": {},
        "converged": defaultdict(list), "delivered": Counter(), "stopped": False,
        "draining": False,
        "errors": [],
    }
    with open(path, errors="replace") as f:
        for line in f:
            kind = line.split(" ", 1)[0]
            fs = fields(line)
            if kind == "sent":
                log["sent"][fs["hash"]] = fs["peer"]
            elif kind == "completed":
                log["completed"][fs["hash"]].append(fs)
            elif kind == "broadcast":
                log["broadcast"][fs["hash"]] = fs["origin"]
            elif kind == "converged":
                log["converged"][fs["hash"]].append(fs)
            elif kind == "delivered":
                log["delivered"][(fs["from"], fs["hash"])] += 1
            elif kind == "stopped":
                log["stopped"] = True
            elif kind == "draining":
                log["draining"] = True
            elif kind == "error":
                log["errors"].append(line.strip())
    return log


def unsettled(work):
    """Sends and broadcasts of live incarnations without their completion line."""
    dead = killed(work)
    missing = []
    for path in logs(work):
        if os.path.basename(path) in dead:
            continue
        log = parse(path)
        missing += [(path, h) for h in log["sent"] if h not in log["completed"]]
        missing += [(path, h) for h in log["broadcast"] if h not in log["converged"]]
    return missing


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def final(work):
    dead = killed(work)
    failures = []
    outcomes = Counter()
    acked = {}  # hash -> receiver, for messages the sender saw ACKed
    deliveries = defaultdict(Counter)  # receiver node -> (from, hash) counts, all incarnations
    sent_total = broadcasts = 0
    for path in logs(work):
        name = os.path.basename(path)
        node = name[len("out_"):].split(".")[0]
        log = parse(path)
        for (sender, h), n in log["delivered"].items():
            deliveries[node][(sender, h)] += n
            if n > 1:
                failures.append(f"{name}: {h} from {sender} delivered {n} times")
        if name in dead:
            continue
        if not (log["draining"] and log["stopped"]):
            failures.append(f"{name}: no 'draining' and 'stopped' lines (did SIGTERM drain it?)")
        for h, peer in log["sent"].items():
            sent_total += 1
            done = log["completed"].get(h, [])
            if len(done) != 1:
                failures.append(f"{name}: {h} to {peer} has {len(done)} completions")
                continue
            outcome = done[0].get("outcome", "")
            if outcome.startswith("acked"):
                outcomes["acked"] += 1
                acked[h] = peer
            elif outcome.startswith("failed: ") and len(outcome) > len("failed: "):
                outcomes["failed (with a reason)"] += 1
            elif outcome == "timed out":
                outcomes["timed out"] += 1
            else:
                failures.append(f"{name}: {h} ended {outcome!r}, without a reason")
        for h in log["completed"]:
            if h not in log["sent"]:
                failures.append(f"{name}: completion for {h}, never sent")
        for h in log["broadcast"]:
            broadcasts += 1
            if len(log["converged"].get(h, [])) != 1:
                failures.append(f"{name}: broadcast {h} has no single convergence line")
    # An ACK means the receiver delivered it (in some incarnation).
    for h, peer in acked.items():
        if not any(key[1] == h for key in deliveries[peer]):
            failures.append(f"{h}: ACKed by {peer}, but {peer} never delivered it")
    delivered = sum(sum(c.values()) for c in deliveries.values())
    print(f"netns cluster: {len(logs(work))} node logs ({len(dead)} killed incarnations), "
          f"{sent_total} messages sent, {broadcasts} broadcasts, {delivered} deliveries")
    print("netns cluster: outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for f in failures[:50]:
        print(f"FAIL {f}")
    return not failures


def main():
    cmd = sys.argv[1]
    if cmd == "scrape":
        print(scrape(sys.argv[2]), end="")
    elif cmd == "online":
        try:
            text = scrape(sys.argv[2])
        except OSError:
            sys.exit(1)
        up = [l for l in text.splitlines() if l.startswith("gossip_peer_online{") and l.endswith(" 1")]
        sys.exit(0 if len(up) == int(sys.argv[3]) else 1)
    elif cmd == "settled":
        sys.exit(0 if not unsettled(sys.argv[2]) else 1)
    elif cmd == "converged":
        path, skip, n = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        with open(path, errors="replace") as f:
            lines = [fields(l) for l in f if l.startswith("converged ")]
        if len(lines) <= skip:
            sys.exit(2)  # not converged yet
        c = lines[skip]
        print(f"broadcast {c.get('hash')}: reached={c.get('reached')} missing={c.get('missing')}")
        sys.exit(0 if c.get("reached") == n and c.get("missing") == "" else 1)
    elif cmd == "reached":
        # Like converged, for membership's phase: the count must be exact; a neighbour that
        # answered late may be listed missing.
        path, skip, n = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        with open(path, errors="replace") as f:
            lines = [fields(l) for l in f if l.startswith("converged ")]
        if len(lines) <= skip:
            sys.exit(2)
        c = lines[skip]
        print(f"broadcast {c.get('hash')}: reached={c.get('reached')} missing={c.get('missing')}")
        sys.exit(0 if c.get("reached") == n else 1)
    elif cmd == "members":
        # members FILE STATE ID,ID...: each id's last `member` line says STATE.
        path, state, ids = sys.argv[2], sys.argv[3], sys.argv[4].split(",")
        last = {}
        with open(path, errors="replace") as f:
            for l in f:
                if l.startswith("member "):
                    m = fields(l)
                    last[m.get("id")] = m.get("state")
        sys.exit(0 if all(last.get(i) == state for i in ids) else 1)
    elif cmd == "pending":
        for path, h in unsettled(sys.argv[2]):
            print(f"{os.path.basename(path)} {h}")
    elif cmd == "final":
        sys.exit(0 if final(sys.argv[2]) else 1)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
