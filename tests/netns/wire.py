#!/usr/bin/env python3
"""An impaired Ethernet wire between two TAP devices: every frame crossing it is delayed,
dropped at random, or (when cut) dropped, as a control file says.

It stands where `tc qdisc ... netem` would, for kernels built without sch_netem (such as the
one CI runs on: `tc qdisc add ... netem` answers "Specified qdisc kind is unknown"). The two
TAP devices are enslaved to the two bridges of the test cluster, so all traffic between the
two halves of the cluster crosses this wire.

Usage: wire.py TAP_A TAP_B CONTROL_FILE
The control file holds `delay_ms=N loss=P cut=0|1` (any order, any subset); it is re-read
whenever it changes. Frames are forwarded in order (a constant delay keeps FIFO order).
"""

import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def read_control(path, current):
    settings = dict(current)
    try:
        with open(path) as f:
            for word in f.read().split():
                key, _, value = word.partition("=")
                if key in ("delay_ms", "loss"):
                    settings[key] = float(value)
                elif key == "cut":
                    settings[key] = value == "1"
    except OSError:
        pass
    return settings


def main():
    tap_a, tap_b, control = sys.argv[1:4]
    fds = {open_tap(tap_a): None, open_tap(tap_b): None}
    a, b = list(fds)
    other = {a: b, b: a}
    settings = {"delay_ms": 0.0, "loss": 0.0, "cut": False}
    mtime = None
    rng = random.Random(7)
    queue = []  # (release time, sequence, destination fd, frame)
    seq = 0
    forwarded = dropped = 0
    last_report = time.monotonic()
    while True:
        try:
            m = os.stat(control).st_mtime_ns
        except OSError:
            m = None
        if m != mtime:
            mtime = m
            settings = read_control(control, settings)
            print(f"wire: {settings}", flush=True)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, dst, frame = heapq.heappop(queue)
            try:
                os.write(dst, frame)
                forwarded += 1
            except OSError:
                dropped += 1  # the device's queue is full: a real wire drops too
        timeout = 0.05
        if queue:
            timeout = max(0.0, min(timeout, queue[0][0] - now))
        readable, _, _ = select.select([a, b], [], [], timeout)
        for fd in readable:
            for _ in range(256):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if settings["cut"] or rng.random() < settings["loss"]:
                    dropped += 1
                    continue
                seq += 1
                release = time.monotonic() + settings["delay_ms"] / 1000.0
                heapq.heappush(queue, (release, seq, other[fd], frame))
        if now - last_report > 10:
            last_report = now
            print(f"wire: forwarded {forwarded} dropped {dropped} queued {len(queue)}", flush=True)


if __name__ == "__main__":
    main()
