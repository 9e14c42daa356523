"""A supervised counter/greeter tree: run it with `python examples/counter_tree.py`.

It shows ask/tell by message type, calls by endpoint name with a map body, a typed error
that leaves the actor running, and a crash that the supervisor answers with a restart.
"""

from __future__ import annotations

import attrs
import trio

from trimicro.actors import (
    Actor,
    ChildSpec,
    Conflict,
    InternalServerError,
    Strategy,
    Supervisor,
    SupervisorStrategy,
    ask,
    start_node,
    tell,
)


@attrs.frozen
class Add:
    k: int


@attrs.frozen
class Hello:
    name: str


class Counter(Actor):
    def __init__(self) -> None:
        self.n = 0

    async def add(self, msg: Add) -> int:
        if msg.k < 0:
            raise Conflict("counters only go up")  # an answer: the actor keeps its state
        if msg.k == 13:
            raise RuntimeError("unlucky")  # a crash: the supervisor restarts the actor
        self.n += msg.k
        return self.n


class Greeter(Actor):
    async def hello(self, msg: Hello) -> str:
        return f"Hello, {msg.name}!"


class App(Supervisor):
    supervision = SupervisorStrategy(strategy=Strategy.ONE_FOR_ONE, max_restarts=5, within=10)
    children = (ChildSpec(Counter, name="counter"), ChildSpec(Greeter, name="greeter"))


async def main() -> None:
    async with start_node("example") as node:
        await node.spawn(App, name="app")
        counter = node.ref("/user/app/counter")
        greeter = node.ref("/user/app/greeter")

        await tell(counter, Add(k=1))
        print("counter after ask:", await ask(counter, Add(k=2)))
        print("by endpoint name:", await ask(greeter, {"name": "Ada"}, endpoint="Greeter.hello"))
        try:
            await ask(counter, Add(k=-1))
        except Conflict as e:
            print("typed error:", e.to_fields())
        try:
            await ask(counter, Add(k=13))
        except InternalServerError as e:
            print("crash answered with:", e.code, e.detail)
        print("after restart the counter starts over:", await ask(counter, Add(k=1), timeout=5))


if __name__ == "__main__":
    trio.run(main)
