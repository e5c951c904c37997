"""Instructions by ATen operator: a regression named as a PyTorch engineer reads it. An
operator nested in another is named beside it and its own cost ranks it; a kernel's leaf
function keeps the name that tells it apart; Python re-entered from an operator's kernel
runs under that operator; and, counted for real, a cumulative sum planted in every pooling
is the first line, under the pooling."""

import json
import shutil
import sys

import pytest

from cifar_spec.bench import callgrind, counts, operators, records, report
from cifar_spec.bench.records import Case

needs_callgrind = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in callgrind.TOOLS),
    reason="valgrind is not installed (apt-get install valgrind)",
)

# callgrind's own format, cut down, names compressed as callgrind writes them: `(id) name`
# the first time, `(id)` after, objects named by `ob=`/`cob=`. The step (a function without
# callers) calls max_pool2d, whose kernel calls max_pool2d_with_indices, and relu twice.
NESTED = """\
# callgrind format
version: 1
positions: line
events: Ir
summary: 1000

ob=(1) /t/libtorch_cpu.so
fl=(1) ???
fn=(1) step()
0 100
cfn=(2) at::_ops::max_pool2d::call(at::Tensor const&)
calls=1 0
0 600
cfn=(3) at::_ops::relu::call(at::Tensor const&)
calls=2 0
0 300

fn=(2)
0 10
cfn=(4) at::native::max_pool2d(at::Tensor const&)
calls=1 0
0 590

fn=(4)
0 40
cfn=(5) at::_ops::max_pool2d_with_indices::call(at::Tensor const&)
calls=1 0
0 550

fn=(5)
0 50
cob=(2) /t/libc.so.6
cfi=(1)
cfn=(6) memcpy
calls=3 0
0 100
cfn=(7) void at::native::cpu_max_pool<float, false>(at::Tensor const&) [clone .isra.0]
calls=1 0
0 400

fn=(7)
0 400

fn=(3)
0 20
cfn=(8) at::native::relu(at::Tensor const&)
calls=2 0
0 280

fn=(8)
0 280

ob=(2)
fl=(1)
fn=(6)
0 100
totals: 1000
"""


def graph_of(text: str) -> operators.Graph:
    return operators.parse_graph(text.splitlines())


def test_an_operator_nested_in_another_is_named_beside_it_and_owns_only_what_it_did_itself():
    ops = operators.operators(graph_of(NESTED), steps=2)
    pool, inner = ops["aten::max_pool2d"], ops["aten::max_pool2d_with_indices"]
    assert (pool.inclusive, pool.own, pool.parent) == (300, 25, None)
    assert (inner.inclusive, inner.own, inner.parent) == (275, 275, "aten::max_pool2d")
    assert inner.kernels == {
        "at::native::cpu_max_pool<float, false> [libtorch_cpu.so]": 200,
        "memcpy [libc.so.6]": 50,
        "at::_ops::max_pool2d_with_indices::call [libtorch_cpu.so]": 25,
    }
    assert ops["aten::relu"].own == 150 and ops["aten::relu"].parent is None
    outside = ops[operators.OUTSIDE]
    assert (outside.inclusive, outside.own) == (500, 50)  # the whole step; the step's own 100
    assert json.loads(json.dumps({k: v.as_dict() for k, v in ops.items()}))
    assert operators.Operator.from_dict(inner.as_dict()) == inner


def test_a_name_used_before_callgrind_defined_it_is_refused_naming_the_line():
    with pytest.raises(callgrind.CountError, match=r"line 3: name \(9\) used before"):
        graph_of("events: Ir\nob=(1) /t/x.so\nfn=(9)\n0 1\n")


def dump(calls: dict[tuple[str, str], int], self_cost: dict[str, int]) -> str:
    """A callgrind file of functions `object:name`, each named in full (no compression)."""
    lines = ["events: Ir", f"summary: {sum(self_cost.values())}"]
    functions = dict.fromkeys([*self_cost, *(f for pair in calls for f in pair)])
    for function in functions:
        ob, name = function.split(":", 1)
        lines += [f"ob={ob}", f"fn={name}", f"0 {self_cost.get(function, 0)}"]
        for (caller, callee), cost in calls.items():
            if caller == function:
                cob, cname = callee.split(":", 1)
                lines += [f"cob={cob}", f"cfn={cname}", "calls=1 0", f"0 {cost}"]
    return "\n".join(lines) + "\n"


T = "/t/libtorch_cpu.so:"
P = "/py/libpython3.11.so:"
CUMSUM = "at::_ops::cumsum::call(at::Tensor const&, long)"
CUMSUM_LOOP = (
    "void c10::function_ref<void (char**, long const*, long, long)>::callback_fn<"
    "at::TensorIteratorBase::loop_2d_from_1d<at::native::(anonymous namespace)::"
    "cpu_cum_base_kernel<float, at::native::(anonymous namespace)::cumsum_cpu_kernel("
    "at::Tensor const&, at::Tensor const&, long)::{lambda()#1}::operator()() const::"
    "{lambda(float*, auto:1, float const*, auto:2, float)#1}>(at::Tensor const&, "
    "at::Tensor const&, long, float)::{lambda(char**, long const*, long)#1}>(long, "
    "char**, long const*, long, long)::{lambda(char**, long const*, long, long)#1}>("
    "long, char**, long const*, long, long)"
)


def test_a_kernels_loop_in_a_shared_iterator_goes_to_its_kernel_and_the_rest_by_call_cost():
    """TensorIterator's for_each serves both kernels: one node. The cumsum loop names its
    kernel and goes to cumsum alone; an unnamed helper under for_each is shared 3:1."""
    calls = {
        (T + "step()", T + CUMSUM): 3100,
        (T + "step()", T + "at::_ops::add_Tensor::call(at::Tensor const&)"): 1100,
        (T + CUMSUM, T + "at::native::cumsum_cpu_kernel(at::Tensor const&, long)"): 3100,
        (T + "at::native::cumsum_cpu_kernel(at::Tensor const&, long)", T + "for_each()"): 3099,
        (T + "at::_ops::add_Tensor::call(at::Tensor const&)", T + "for_each()"): 1033,
        (T + "for_each()", T + CUMSUM_LOOP): 3000,
        (T + "for_each()", T + "helper()"): 1000,
        (T + "for_each()", T + "add_loop()"): 1000,
    }
    self_cost = {T + CUMSUM_LOOP: 3000, T + "helper()": 1000, T + "add_loop()": 1000}
    ops = operators.operators(graph_of(dump(calls, self_cost)), steps=1)
    loop = (
        "c10::function_ref::callback_fn (loop_2d_from_1d, cpu_cum_base_kernel, cumsum_cpu_kernel)"
    )
    kernels = ops["aten::cumsum"].kernels
    assert kernels[f"{loop} [libtorch_cpu.so]"] == 3000
    assert kernels["helper [libtorch_cpu.so]"] == pytest.approx(3100 / 4134 * 1000)
    assert ops["aten::add_Tensor"].kernels["helper [libtorch_cpu.so]"] == pytest.approx(
        1034 / 4134 * 1000
    )


def test_an_operators_redispatch_from_its_own_call_is_the_same_operator_counted_once():
    call, again = "at::_ops::add_Tensor::call()", "at::_ops::add_Tensor::redispatch()"
    calls = {
        (T + "step()", T + call): 500,
        (T + call, T + "VariableType::add_Tensor()"): 490,
        (T + "VariableType::add_Tensor()", T + again): 400,
        (T + again, T + "add_kernel()"): 380,
    }
    self_cost = {T + call: 10, T + "VariableType::add_Tensor()": 90, T + again: 20}
    self_cost[T + "add_kernel()"] = 380
    ops = operators.operators(graph_of(dump(calls, self_cost)), steps=1)
    assert set(ops) == {"aten::add_Tensor", operators.OUTSIDE}
    assert (ops["aten::add_Tensor"].inclusive, ops["aten::add_Tensor"].own) == (500, 500)
    assert ops["aten::add_Tensor"].kernels["add_kernel [libtorch_cpu.so]"] == 380


def test_jit_code_is_pooled_by_its_heaviest_caller_and_a_stripped_function_by_its_library():
    jit = "???:0x00000000dc835000"
    calls = {
        (T + "step()", T + "at::_ops::mm::call()"): 1000,
        (T + "at::_ops::mm::call()", T + "dnnl::sgemm_driver() const"): 1000,
        (T + "dnnl::sgemm_driver() const", jit): 900,
        (T + "at::_ops::mm::call()", T + "0x0000000000abc000"): 0,
    }
    self_cost = {jit: 900, T + "dnnl::sgemm_driver() const": 100, T + "0x0000000000abc000": 5}
    kernels = operators.operators(graph_of(dump(calls, self_cost)), steps=1)["aten::mm"].kernels
    assert kernels["JIT code, called from dnnl::sgemm_driver [libtorch_cpu.so]"] == 900
    assert kernels["code without a symbol in libtorch_cpu.so"] == 5


def python_kernel_calls() -> dict[tuple[str, str], int]:
    """The step's Python calls max_pool2d and conv2d through cfunction_call; max_pool2d's
    Python kernel re-enters the interpreter, whose second-level cfunction_call calls cumsum.
    The interpreter's frame evaluator is one node for both: only the level tells them apart."""
    pool, conv = "at::_ops::max_pool2d::call()", "at::_ops::conv2d::call()"
    return {
        (P + "_PyEval_EvalFrameDefault", P + "_PyEval_EvalFrameDefault'2"): 10_000,
        (P + "_PyEval_EvalFrameDefault'2", P + "cfunction_call"): 9_000,
        (P + "cfunction_call", T + "THPVariable_max_pool2d"): 1_500,
        (P + "cfunction_call", T + "THPVariable_conv2d"): 7_000,
        (T + "THPVariable_max_pool2d", T + pool): 1_500,
        (T + "THPVariable_conv2d", T + conv): 7_000,
        (T + pool, T + "PythonKernelHolder::operator()"): 1_400,
        (T + "PythonKernelHolder::operator()", P + "_PyEval_EvalFrameDefault'2"): 1_400,
        (P + "_PyEval_EvalFrameDefault'2", P + "cfunction_call'2"): 1_200,
        (P + "cfunction_call'2", T + "THPVariable_cumsum"): 1_200,
        (T + "THPVariable_cumsum", T + CUMSUM): 1_200,
        (T + "PythonArgs::scalar_slow", P + "PyObject_IsInstance"): 10,  # C into Python, too
        (P + "cfunction_call", T + "THPVariable_add_"): 10,
        (T + "THPVariable_add_", T + "PythonArgs::scalar_slow"): 10,
    }


def test_an_operator_called_from_python_reentered_by_another_operator_runs_under_it():
    self_cost = {T + CUMSUM: 1_200, T + "at::_ops::conv2d::call()": 7_000}
    ops = operators.operators(graph_of(dump(python_kernel_calls(), self_cost)), steps=1)
    cumsum = ops["aten::cumsum"]
    assert cumsum.parent == "aten::max_pool2d" and cumsum.parent_share > 0.99
    assert ops["aten::conv2d"].parent is None  # the step's first-level call
    assert ops["aten::max_pool2d"].own == pytest.approx(300, abs=10)


@pytest.mark.parametrize(
    "name, shown",
    [
        (
            CUMSUM_LOOP,
            "c10::function_ref::callback_fn (loop_2d_from_1d, cpu_cum_base_kernel, "
            "cumsum_cpu_kernel)",
        ),
        (
            "void at::native::cpu_max_pool<float, false>(at::Tensor const&) [clone .isra.0]",
            "at::native::cpu_max_pool<float, false>",
        ),
        ("operator delete(void*, unsigned long)", "operator delete"),
        (
            "at::native::(anonymous namespace)::cumsum_cpu_kernel(at::Tensor const&, long)",
            "at::native::cumsum_cpu_kernel",
        ),
        (
            "at::native::fill_kernel(at::TensorIterator&)::{lambda()#1}::operator()() const",
            "at::native::fill_kernel::lambda::operator()",
        ),
    ],
)
def test_a_kernels_name_keeps_what_tells_it_apart(name, shown):
    assert operators.kernel_name(name) == shown


def side(total: float, **own: float) -> dict[str, operators.Operator]:
    ops = {
        name: operators.Operator(name, cost, cost, kernels={"k": cost})
        for name, cost in own.items()
    }
    ops[operators.OUTSIDE] = operators.Operator(operators.OUTSIDE, total, 0.0)
    return ops


def test_the_diff_ranks_operators_by_their_own_change_with_its_share_and_parent():
    base = [side(1000, conv=500, pool=100), side(1002, conv=502, pool=100)]
    cand = [side(1030, conv=500, pool=104, cumsum=26)]
    cand[0]["cumsum"] = operators.Operator("cumsum", 26, 26, "pool", 1.0, {"loop": 26})
    first, second = operators.diff(base, cand, top=2)
    assert (first.operator, first.parent, first.delta) == ("cumsum", "pool", 26)
    assert first.share == pytest.approx(26 / 29) and first.kernels[0].function == "loop"
    assert (second.operator, second.delta, second.baseline) == ("pool", 4, 100)
    assert report.operator_lines(first)[0].startswith(
        "cumsum under pool  +26 (89.7% of the change)"
    )
    assert json.loads(json.dumps(first.as_dict()))["kernels"][0]["delta"] == 26


# Loaded at start-up by a Python run with this folder on PYTHONPATH: aten::max_pool2d's
# kernel replaced by one that also runs a cumulative sum, then max_pool2d_with_indices, as
# aten's own does. Registered in the dispatcher, it runs inside the pooling operator's
# call; autograd differentiates what it calls (CompositeImplicitAutograd).
PLANT_SITE = """
import torch

_library = torch.library.Library("aten", "IMPL")


def max_pool2d(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    torch.cumsum(input, -1)
    return torch._C._nn.max_pool2d_with_indices(
        input, kernel_size, stride, padding, dilation, ceil_mode
    )[0]


_library.impl("max_pool2d", max_pool2d, "CompositeImplicitAutograd")
"""


@needs_callgrind
@pytest.mark.slow
def test_a_cumulative_sum_planted_in_every_pooling_is_the_first_operator_under_the_pooling(
    planted_python,
):
    """Counted for real: this Python, and this Python with every max_pool2d also running a
    cumsum, eager at batch 16 (a step of 425 M instructions, the cumsum +1.3%, 50 times
    what two processes of one environment differ by), one process each, both at once:
    each starts in 70-85 s of CPU. The cumsum reaches its operator through the Python
    interpreter, which every call shares: its line still says it ran under max_pool2d."""
    plant = planted_python("plant", PLANT_SITE)
    case = Case("cpu", "eager", 16)
    counted = callgrind.count_all({"base": sys.executable, "plant": str(plant)}, 1, [case])
    base, cand = (counted[side][0].counts[case] for side in ("base", "plant"))
    assert cand.instructions > base.instructions * 1.005
    judged = counts.judge(case, [base], [cand], counts.COUNT_THRESHOLD)
    printed = "\n".join(report.count_lines(judged))
    assert judged.verdict == records.REGRESSION, printed
    first = judged.top[0]
    assert first.operator == "aten::cumsum" and first.parent == "aten::max_pool2d", printed
    # What the table prints under the case's row: the operator first, its pooling beside it.
    assert printed.splitlines()[1].startswith("    aten::cumsum under aten::max_pool2d  +"), printed
    assert first.share > 0.9, printed
    assert "cumsum_cpu_kernel" in first.kernels[0].function, printed
    assert first.kernels[0].delta > 0.9 * first.delta, printed
    # The plant's pooling was differentiated as aten's is: its backward ran, as often.
    backward = "aten::max_pool2d_with_indices_backward"
    assert cand.operators[backward].inclusive == pytest.approx(
        base.operators[backward].inclusive, rel=0.01
    )
