"""Instructions by ATen operator, from one callgrind dump: what a PyTorch engineer reads.

`callgrind.py` counts a step; this module reads the dump it wrote (callgrind's own
format: `fn=`, `cfn=`, `calls=`, names compressed as `(id) name`) into a call graph and
says, per operator, what it cost. An operator is a function `at::_ops::NAME::call` or
`::redispatch`, shown as `aten::NAME` (NAME as at::_ops spells it: the overload joined
by "_", so `aten::add__Tensor` is add_.Tensor; the split is not told reliably by the name).

Per operator, per step:

- inclusive: the instructions of its calls from outside itself (a `::redispatch` reached
  from its own `::call` is the same operator);
- parent: the operator it ran under, the innermost one; none at the step's own level;
- own: inclusive minus the inclusive of the operators nested in it, so that the
  operator that did extra work ranks first, not the one that called it;
- kernels: the leaf functions (self cost) under it, named so that the kernel's own
  name survives (`kernel_name`). JIT code has no symbol: it is pooled by its heaviest
  caller, as callgrind.py does.

What the call graph can attribute, and what it cannot. callgrind's graph has one node
per function, not per call path, so "under which operator" is an estimate:

- Through C++ code that several operators share (the dispatcher, TensorIterator's
  for_each), a call is shared among the callers by their call costs (gprof's rule),
  except that a leaf instantiated for a kernel is followed to the callers that name
  that kernel (TensorIterator's loop for cumsum names `cumsum_cpu_kernel` in its
  template arguments; without this, the loops of fill, add and cumsum were shared
  among all three). Exact where a function has one caller, as most kernels are.
- Through the Python interpreter (a Python kernel registered with torch.library, a
  `__torch_function__` or dispatch mode), every call path meets in the same few
  interpreter functions. What tells them apart is callgrind's recursion level: a
  function called while a call of itself is active gets a node of its own (`'2`).
  An operator whose binding was called from such a second-level interpreter function
  (`cfunction_call'2`: Python called a torch function while another torch function
  called from Python was running) ran under an operator that entered Python, shared
  among those operators by what each ran in Python; one called from the first level
  ran at the step's own level. So a Python kernel's operators are found under their
  operator when the kernel calls them the way the step called the operator (as
  `torch.cumsum` under `torch.max_pool2d`); one called another way (`x.cumsum()` from
  a kernel called through `torch.max_pool2d`) is counted at the step's level, and two
  operators with Python kernels share their nested operators by cost.
  Measured on the real case (tests/test_operators.py, torch 2.14, Python 3.11): a
  cumsum in a Python kernel of every max_pool2d is 99% of the change, under
  aten::max_pool2d at a share of 0.995.
- The interpreter's own instructions (and code without a symbol that it calls, a
  trampoline of its own) are not split by caller: under an operator they
  are the part of its own cost that no other function explains (`REST`).
- An operator called inside itself through other functions is counted once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cifar_spec.errors import CountError

Node = tuple[str, str]  # (object file, function name as callgrind wrote it, with any 'N)


@dataclass
class Graph:
    """A dump's call graph: self cost by function, and the inclusive cost of the calls
    between two functions, in the dump's first event (instructions)."""

    self_cost: dict[Node, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[tuple[Node, Node], int] = field(default_factory=lambda: defaultdict(int))
    total: int = 0


# The name's kind in callgrind's compression: files, objects and functions count apart.
KINDS = {
    "ob": "ob",
    "cob": "ob",
    "fl": "fl",
    "fi": "fl",
    "fe": "fl",
    "cfi": "fl",
    "cfl": "fl",
    "fn": "fn",
    "cfn": "fn",
}


SPEC = re.compile(r"^(\w+)=(.*)$")


NAMED = re.compile(r"^\((\d+)\)(?: (.*))?$")


HEADER = re.compile(r"^[a-z]+:")


def read_graph(path: Path) -> Graph:
    try:
        with path.open() as lines:
            return parse_graph(lines)
    except CountError as error:
        raise CountError(f"could not follow the call graph in {path}: {error}") from None


def parse_graph(lines: Iterable[str]) -> Graph:
    """The call graph of one callgrind output file (one part, as every dump of ours)."""
    reader = Reader()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            reader.read(line, number)
    return reader.graph


class Reader:
    """callgrind's format, line by line: which function the cost lines are of, and whether
    the next one is a call's (inclusive) or the function's own."""

    def __init__(self) -> None:
        self.graph = Graph()
        self.names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
        self.ob = self.cob = ""
        self.fn: Node | None = None
        self.callee: Node | None = None
        self.positions, self.event = 1, 0
        self.after: str | None = None  # "calls": a call's cost line next; "jump": a position

    def read(self, line: str, number: int) -> None:
        spec = SPEC.match(line)
        if spec:
            self.specification(*spec.groups(), number)
        elif HEADER.match(line):
            self.header(*line.split(":", 1))
        else:
            self.cost(line.split(), number)

    def specification(self, key: str, value: str, number: int) -> None:
        if key in KINDS:
            value = uncompress(self.names[KINDS[key]], value, number)
        if key == "ob":
            self.ob = self.cob = value
        elif key == "fn":
            self.fn, self.cob = (self.ob, value), self.ob
        elif key == "cob":
            self.cob = value
        elif key == "cfn":
            self.callee = (self.cob, value)
        elif key == "calls":
            self.after = "calls"
        elif key in ("jump", "jcnd"):
            self.after = "jump"

    def header(self, key: str, value: str) -> None:
        if key == "positions":
            self.positions = len(value.split())
        elif key == "events":
            self.event = first_event(value)
        elif key in ("totals", "summary"):
            self.graph.total = int(value.split()[self.event])

    def cost(self, fields: list[str], number: int) -> None:
        column = self.positions + self.event
        cost = int(fields[column]) if len(fields) > column else 0
        after, self.after = self.after, None
        if after == "jump":
            return
        if self.fn is None or (after == "calls" and self.callee is None):
            raise CountError(f"line {number}: a cost before its function is named")
        if after == "calls":
            self.graph.calls[(self.fn, self.callee)] += cost
            self.cob = self.ob  # a call's object is named again for each call in another
        else:
            self.graph.self_cost[self.fn] += cost


def uncompress(known: dict[str, str], value: str, number: int) -> str:
    """`(id) name` defines id, `(id)` uses it; a plain name is itself."""
    match = NAMED.match(value)
    if not match:
        return value
    ident, name = match.groups()
    if name is not None:
        known[ident] = name
        return name
    if ident not in known:
        raise CountError(f"line {number}: name ({ident}) used before it is defined")
    return known[ident]


def first_event(value: str) -> int:
    """The column of instructions (Ir) among the events; callgrind writes it first."""
    events = value.split()
    return events.index("Ir") if "Ir" in events else 0


OPERATOR = re.compile(r"^at::_ops::(\w+)::(?:call|redispatch)\(")


LEVEL = re.compile(r"'(\d+)$")


def operator_of(node: Node) -> str | None:
    """`aten::NAME` for a function at::_ops::NAME::call or ::redispatch, else None."""
    match = OPERATOR.match(node[1])
    return f"aten::{match.group(1)}" if match else None


def level(node: Node) -> int:
    """callgrind's recursion level: 2 for `fn'2`, a call made while fn was active."""
    match = LEVEL.search(node[1])
    return int(match.group(1)) if match else 1


def python_nodes(graph: Graph) -> set[Node]:
    """The Python interpreter's functions: those of the file its frame evaluator is in, and
    code without a symbol that it calls (a trampoline of its own, not a library's JIT)."""
    nodes = set(graph.self_cost) | {n for pair in graph.calls for n in pair}
    files = {ob for ob, name in nodes if LEVEL.sub("", name) == "_PyEval_EvalFrameDefault"}
    python = {n for n in nodes if n[0] in files}
    unnamed = [(a, b) for a, b in graph.calls if b[0] in ("", "???")]
    grew = True
    while grew:
        grew = False
        for caller, callee in unnamed:
            if caller in python and callee not in python:
                python.add(callee)
                grew = True
    return python


OUTSIDE = "(no operator)"  # the step's own level: Python, the autograd engine, the loops


REST = "the Python interpreter, and the rest no function below explains"


KEEP = 1e-4  # of a step's instructions: smaller operators and kernels are left out


def normalized(weights: dict) -> dict:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items() if v} if total > 0 else {}


class Enclosing:
    """Where the code of each function ran: {innermost operator (None: none): share}.

    The call graph is walked from a function to its callers, each weighted by the cost
    of its calls (+1, so that a caller whose calls cost nothing still counts), until an
    operator, the step's top (a function without callers), or the Python interpreter,
    read by its recursion level (the module's docstring). A leaf instantiated for a
    kernel (`hints`: the functions its template arguments name) is followed, where a
    shared function has callers of that name, to those callers only: TensorIterator's
    loop for cumsum goes to cpu_cum_base_kernel, not to every kernel that iterates.
    A call that closes a cycle is left out of the walk; a result is kept once found,
    whatever path asked first.
    """

    def __init__(self, graph: Graph, python: set[Node], entering: bool = False) -> None:
        self.graph = graph
        self.python = python
        self.entering = entering  # finding who entered Python: nested Python is unknown
        self.callers: dict[Node, list[tuple[Node, int]]] = defaultdict(list)
        for (caller, callee), cost in graph.calls.items():
            if caller != callee:
                self.callers[callee].append((caller, cost))
        self.found: dict[tuple[Node, frozenset], dict] = {}
        self.nested: dict | None = None

    def of_code(self, node: Node) -> dict:
        op = operator_of(node)
        if op:
            return {op: 1.0}
        return self.of_calls(node, frozenset(), frozenset(template_functions(node[1])))

    def of_calls(self, node: Node, path: frozenset, hints: frozenset) -> dict:
        """Whom the calls of `node` ran under; {} where nothing can say."""
        key = (node, hints)
        if key in self.found:
            return self.found[key]
        callers = [(c, cost) for c, cost in self.callers[node] if c not in path]
        if not self.callers[node]:
            return {None: 1.0}  # where counting began: the step's own level
        named = [(c, cost) for c, cost in callers if hints & mentioned(c[1])]
        if named:
            callers, hints = named, frozenset()
        weights: dict = defaultdict(float)
        for caller, cost in callers:
            for where, share in self.of_caller(caller, node, path | {node}, hints).items():
                weights[where] += (cost + 1) * share
        self.found[key] = normalized(weights)
        return self.found[key]

    def of_caller(
        self, caller: Node, callee: Node, path: frozenset, hints: frozenset = frozenset()
    ) -> dict:
        if caller in self.python and callee not in self.python:
            return self.in_python() if level(caller) >= 2 else {None: 1.0}
        op = operator_of(caller)
        return {op: 1.0} if op else self.of_calls(caller, path, hints)

    def in_python(self) -> dict:
        """Whom Python re-entered from C ran under: the operators (or none) whose code
        called into the interpreter, by the cost of those calls."""
        if self.entering:
            return {}
        if self.nested is None:
            finder = Enclosing(self.graph, self.python, entering=True)
            weights: dict = defaultdict(float)
            for (caller, callee), cost in self.graph.calls.items():
                if callee in self.python and caller not in self.python:
                    for where, share in finder.of_code(caller).items():
                        weights[where] += (cost + 1) * share
            self.nested = normalized(weights) or {None: 1.0}
        return self.nested


@dataclass(frozen=True)
class Operator:
    """One operator in one process (or the mean of several): instructions per step."""

    name: str
    inclusive: float
    own: float  # inclusive minus its nested operators' inclusive
    parent: str | None = None  # the operator it ran under most; None: the step's own level
    parent_share: float = 1.0  # of its inclusive, the part under that parent
    kernels: dict[str, float] = field(default_factory=dict)  # leaf function -> its own part

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "inclusive": self.inclusive,
            "own": self.own,
            "parent": self.parent,
            "parent_share": self.parent_share,
            "kernels": self.kernels,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Operator:
        return cls(**data)


def read_operators(path: Path, steps: int) -> dict[str, Operator]:
    """The operators of one dump, per step, above KEEP of the step (`operators`)."""
    return operators(read_graph(path), steps)


def operators(graph: Graph, steps: int) -> dict[str, Operator]:
    """{aten::NAME: Operator} per step, with OUTSIDE for the step's own level (its inclusive
    is the whole step); operators and kernels under KEEP of the step are left out."""
    python = python_nodes(graph)
    enclosing = Enclosing(graph, python)
    inclusive, parents = inclusive_costs(graph, enclosing)
    inclusive[None] = graph.total
    shares = {op: normalized(weights) or {None: 1.0} for op, weights in parents.items()}
    nested = nested_costs(inclusive, shares)
    kernels = leaf_costs(graph, enclosing, python)
    keep = KEEP * graph.total
    out = {}
    for op, cost in inclusive.items():
        if cost >= keep:
            parent, share = max(shares.get(op, {None: 1.0}).items(), key=lambda kv: kv[1])
            own = cost - nested[op]
            named = {k: v / steps for k, v in with_rest(kernels[op], own).items() if v >= keep}
            out[op or OUTSIDE] = Operator(
                op or OUTSIDE, cost / steps, own / steps, parent, share, named
            )
    return out


def nested_costs(inclusive: dict, shares: dict) -> dict:
    """{operator (None: the step's level): the inclusive cost of the operators under it}."""
    nested: dict = defaultdict(float)
    for op, share in shares.items():
        for parent, part in share.items():
            nested[parent] += inclusive[op] * part
    return nested


def with_rest(kernels: dict[str, float], own: float) -> dict[str, float]:
    """An operator's kernels, the most first, and REST: its own cost that they leave."""
    named = dict(sorted(kernels.items(), key=lambda kv: -kv[1]))
    rest = own - sum(named.values())
    return {**named, REST: rest} if rest > 0 else named


def inclusive_costs(graph: Graph, enclosing: Enclosing) -> tuple[dict, dict]:
    """Each operator's inclusive cost, from the calls into it from outside itself, and the
    costs of those calls by the operator each ran under ({op: {parent: cost}})."""
    inclusive: dict = defaultdict(float)
    parents: dict = defaultdict(lambda: defaultdict(float))
    for (caller, callee), cost in graph.calls.items():
        op = operator_of(callee)
        if op is None:
            continue
        for where, share in (
            enclosing.of_caller(caller, callee, frozenset()) or {None: 1.0}
        ).items():
            if where != op:
                inclusive[op] += cost * share
                parents[op][where] += cost * share
    return inclusive, parents


def leaf_costs(graph: Graph, enclosing: Enclosing, python: set[Node]) -> dict:
    """{operator (None: none): {kernel name: self cost}}, the interpreter's left out: its
    functions serve every caller alike, so only the rest of an operator's own cost says
    what Python ran under it."""
    out: dict = defaultdict(lambda: defaultdict(float))
    callers = enclosing.callers
    for node, cost in graph.self_cost.items():
        if node in python or not cost:
            continue
        name = label(node, callers)
        for where, share in (enclosing.of_code(node) or {None: 1.0}).items():
            out[where][name] += cost * share
    return out


def label(node: Node, callers: dict[Node, list[tuple[Node, int]]]) -> str:
    """A leaf function as printed: `kernel_name [library]`; code without a symbol, JIT's
    by its heaviest caller (a new address in every process), a library's by the library."""
    ob, name = node[0], LEVEL.sub("", node[1])
    library = Path(ob).name
    if not re.fullmatch(r"0x[0-9a-fA-F]+", name):
        return f"{kernel_name(name)} [{library}]" if library not in ("", "???") else name
    if library not in ("", "???"):
        return f"code without a symbol in {library}"
    known = [(cost, caller) for caller, cost in callers.get(node, [])]
    if not known:
        return "JIT code, no caller recorded"
    return f"JIT code, called from {label(max(known)[1], {})}"


IDENTIFIER = re.compile(r"(?:[A-Za-z_]\w*::)*[A-Za-z_]\w*")


GENERIC = {"operator_call", "lambda", "invoke", "__invoke", "__invoke_impl", "call", "apply"}


def kernel_name(name: str) -> str:
    """A demangled C++ name cut to what tells the function apart: its own qualified name
    (short template arguments kept, `cpu_max_pool<float, false>`), then the functions named
    in its template arguments, outermost first, without their namespaces. A TensorIterator
    loop instantiated for cumsum, 2,000 characters long, reads
    `c10::function_ref::callback_fn (loop_2d_from_1d, cpu_cum_base_kernel, cumsum_cpu_kernel)`."""
    top, groups = flatten(simplified(name))
    words = [w for w in top.split() if w not in ("const", "volatile", "&", "&&")] or ["?"]
    own = re.sub(r"\x00(\d+)\x00", lambda m: short_template(groups[int(m.group(1))]), words[-1])
    own = own.replace("operator_call", "operator()").replace("\x01", " ")
    inner = template_functions(name)
    return own + (f" ({', '.join(inner[:4])})" if inner else "")


@cache
def mentioned(name: str) -> frozenset[str]:
    """The functions a function's name names: its own (last name) and its templates'."""
    return frozenset([own_function(name), *template_functions(name)])


def own_function(name: str) -> str:
    """The last name of a function's own that is not generic: `at::native::fill_kernel(...)`
    and `at::native::fill_kernel(...)::{lambda()#1}::operator()()` -> `fill_kernel`."""
    top, _ = flatten(simplified(name))
    words = [w for w in top.split() if w not in ("const", "volatile", "&", "&&")] or ["?"]
    parts = re.sub(r"\x00\d+\x00", "", words[-1]).split("::")
    return next((p for p in reversed(parts) if p not in GENERIC), parts[-1])


@cache
def template_functions(name: str) -> tuple[str, ...]:
    """The functions named inside a name's brackets, by their last name, outermost first,
    the generic ones (lambdas, operator(), invoke) left out."""
    _, groups = flatten(simplified(name))
    out: list[str] = []
    for group in groups:
        for function in named_functions(group[1:-1]):
            if function not in GENERIC and function not in out:
                out.append(function)
    return tuple(out)


def simplified(name: str) -> str:
    """Lambdas and the anonymous namespace as words; operator() without its brackets."""
    text = re.sub(r" \[clone [^\]]*\]", "", name).replace("(anonymous namespace)::", "")
    text = re.sub(r"\{lambda\([^{}]*\)#\d+\}", "lambda", text)
    text = re.sub(r"\{unnamed type#\d+\}", "unnamed", text)
    text = re.sub(r"operator (?=\w)", "operator\x01", text)  # `operator delete`: one word
    return text.replace("operator()", "operator_call")


def flatten(text: str) -> tuple[str, list[str]]:
    """The name's outermost level, each bracketed group (`<...>`, `(...)`) replaced by a
    mark `\\0N\\0`, and the groups."""
    top, groups, depth, start = [], [], 0, 0
    for i, char in enumerate(text):
        if char in "<(":
            if depth == 0:
                start = i
            depth += 1
        elif char in ">)" and depth:
            depth -= 1
            if depth == 0:
                top.append(f"\x00{len(groups)}\x00")
                groups.append(text[start : i + 1])
        elif depth == 0:
            top.append(char)
    return "".join(top), groups


def short_template(group: str) -> str:
    """A group kept in the own name: short template arguments that name no function."""
    return group if group[0] == "<" and "(" not in group and len(group) <= 40 else ""


def named_functions(text: str) -> list[str]:
    """The functions named in `text` (an identifier, its template arguments, then `(`), by
    their last name, in order."""
    out = []
    for match in IDENTIFIER.finditer(text):
        after = skip_template(text, match.end())
        if after < len(text) and text[after] == "(":
            out.append(match.group().rsplit("::", 1)[-1])
    return out


def skip_template(text: str, start: int) -> int:
    """The index after a template argument list at `start` (`start` itself if none)."""
    if start >= len(text) or text[start] != "<":
        return start
    depth = 0
    for i in range(start, len(text)):
        depth += {"<": 1, ">": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


TOP = 5  # operators in a case's diff


KERNELS = 3  # leaf functions under each


APPEARED, VANISHED = "appeared", "vanished"  # a row run by the candidate only, the baseline only


def interval_fields(row: KernelDelta | OperatorDelta) -> dict:
    """A time row's interval and presence, as JSON holds them; nothing for a count's row."""
    if row.low is None:
        return {}
    return {"delta_low": row.low, "delta_high": row.high, "presence": row.presence or None}


@dataclass(frozen=True)
class KernelDelta:
    """A leaf function under an operator, its own instructions per step on both sides; or,
    attributing time (`attribution.py`), a kernel's device seconds per step, with an interval."""

    function: str
    baseline: float
    candidate: float
    low: float | None = None  # the delta's 95% interval, where the metric has one (time)
    high: float | None = None
    presence: str = ""  # APPEARED or VANISHED: run on one side only
    detail: str = ""  # what the name leaves out (a kernel's template arguments), if known

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline

    def as_dict(self) -> dict:
        return {
            "function": self.function,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "delta": self.delta,
            **interval_fields(self),
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class OperatorDelta:
    """An operator's own instructions per step on both sides (means over processes), its
    share of the case's change, the operator it ran under, and its kernels that moved most.
    Attributing time (`attribution.py`), its own seconds per step, with the delta's interval."""

    operator: str
    parent: str | None
    baseline: float
    candidate: float
    share: float  # of the change in the whole step's instructions per step
    inclusive: tuple[float, float]  # baseline, candidate
    kernels: list[KernelDelta] = field(default_factory=list)
    low: float | None = None  # the delta's 95% interval, where the metric has one (time)
    high: float | None = None
    presence: str = ""  # APPEARED or VANISHED: run on one side only

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline

    def as_dict(self) -> dict:
        return {
            "operator": self.operator,
            "parent": self.parent,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "delta": self.delta,
            **interval_fields(self),
            "share": self.share,
            "inclusive": list(self.inclusive),
            "kernels": [k.as_dict() for k in self.kernels],
        }


def mean_operators(processes: list[dict[str, Operator]]) -> dict[str, Operator]:
    """One side's operators as the mean over its processes (0 where a process lacks one);
    the parent is the first process's that has the operator."""
    names = list(dict.fromkeys(name for p in processes for name in p))
    out = {}
    for name in names:
        have = [p[name] for p in processes if name in p]
        kernels = list(dict.fromkeys(k for op in have for k in op.kernels))
        out[name] = Operator(
            name,
            sum(op.inclusive for op in have) / len(processes),
            sum(op.own for op in have) / len(processes),
            have[0].parent,
            have[0].parent_share,
            {k: sum(op.kernels.get(k, 0.0) for op in have) / len(processes) for k in kernels},
        )
    return out


def diff(
    base: list[dict[str, Operator]],
    cand: list[dict[str, Operator]],
    top: int = TOP,
    kernels: int = KERNELS,
) -> list[OperatorDelta]:
    """The `top` operators by |own instructions per step, candidate - baseline| (each side
    a list of processes' operators; a saved baseline's mean is a list of one), each with
    its `kernels` leaf functions that moved most. The share is of the change of the whole
    step (OUTSIDE's inclusive), 0 where the step did not change."""
    b, c = mean_operators(base), mean_operators(cand)
    empty = Operator("", 0.0, 0.0)
    change = c.get(OUTSIDE, empty).inclusive - b.get(OUTSIDE, empty).inclusive
    rows = []
    for name in dict.fromkeys([*b, *c]):
        old, new = b.get(name, empty), c.get(name, empty)
        rows.append(
            OperatorDelta(
                name,
                (new if name in c else old).parent,
                old.own,
                new.own,
                (new.own - old.own) / change if change else 0.0,
                (old.inclusive, new.inclusive),
                kernel_deltas(old.kernels, new.kernels, kernels),
            )
        )
    rows.sort(key=lambda r: (-abs(r.delta), r.operator))
    return rows[:top]


def kernel_deltas(old: dict[str, float], new: dict[str, float], top: int) -> list[KernelDelta]:
    rows = [KernelDelta(k, old.get(k, 0.0), new.get(k, 0.0)) for k in dict.fromkeys([*old, *new])]
    rows = [r for r in rows if abs(r.delta) >= 1]  # an instruction per step, at the least
    rows.sort(key=lambda r: (-abs(r.delta), r.function))
    return rows[:top]
