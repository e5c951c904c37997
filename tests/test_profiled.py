"""Profiled rounds: a case's steps under torch.profiler, read per step into the self time of
each operator on the CPU, the device time of each kernel under the operator that launched it
on CUDA; kernel names that match across torch builds; a worker that profiles on request."""

import json
import math

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from cifar_spec.bench import cases, profiled
from cifar_spec.bench._handle import reply_problem
from cifar_spec.bench.profiled import OUTSIDE, STEP_MARK, KernelName, Profile, kernel_name
from cifar_spec.bench.worker import Held, handle
from cifar_spec.step import StepOptions

MAX_POOL = (
    "void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(int, float "
    "const*, long, long, long, int, int, int, int, int, int, int, int, int, int, float*, long*)"
)
NCHW_TO_NHWC = (
    "void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true, "
    "(cudnnKernelDataType_t)2>(cudnn::engines_precompiled::nchw2nhwc_params_t<float>, float "
    "const*, float*)"
)
XMMA = (
    "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nchw_tilesize128x64x16_stage4_"
    "warpsize2x2x1_g1_tensor16x8x8_execute_kernel__5x_cudnn"
)
ADD_4 = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
    "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<float>, at::detail::"
    "Array<char*, 3>)"
)
MUL_LAMBDA = (
    "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
    "BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >(at::"
    "TensorIteratorBase&, at::native::BinaryFunctor<float, float, float, at::native::"
    "binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, at::native::"
    "gpu_kernel_impl_nocast<at::native::BinaryFunctor<float, float, float, at::native::"
    "binary_internal::MulFunctor<float> > >(at::TensorIteratorBase&, at::native::BinaryFunctor"
    "<float, float, float, at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)"
    "#1})"
)
CUTLASS = (
    "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4>(cutlass_80_"
    "tensorop_s1688gemm_64x64_16x6_tn_align4::Params)"
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (MAX_POOL, KernelName("at::native::max_pool_forward_nchw", "float, float")),
        (
            NCHW_TO_NHWC,
            KernelName(
                "cudnn::engines_precompiled::nchwToNhwcKernel",
                "float, float, float, false, true, (cudnnKernelDataType_t)2",
            ),
        ),
        (XMMA, KernelName(XMMA)),
        (
            ADD_4,
            KernelName(
                "at::native::vectorized_elementwise_kernel",
                "4, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3>",
            ),
        ),
        (
            CUTLASS,
            KernelName(
                "cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4>",
                "cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4",
            ),
        ),
        ("triton_poi_fused_add_relu_3", KernelName("triton_poi_fused_add_relu", "", "3")),
        ("Memcpy HtoD (Pageable -> Device)", KernelName("Memcpy HtoD (Pageable -> Device)")),
        ("void foo_kernel<8>(float*) [clone .kd]", KernelName("foo_kernel", "8", ".kd")),
    ],
    ids=[
        "aten-template",
        "cudnn-template",
        "cudnn-plain",
        "aten-functor",
        "cutlass",
        "triton",
        "memcpy",
        "clone-suffix",
    ],
)
def test_a_kernel_name_keeps_its_own_name_and_sets_its_template_and_suffix_apart(raw, expected):
    assert kernel_name(raw) == expected


@pytest.mark.parametrize(
    "one, other",
    [
        (ADD_4, ADD_4.replace("<4,", "<2,")),  # another vector width, by alignment
        ("triton_poi_fused_add_relu_3", "triton_poi_fused_add_relu_0"),  # another numbering
        (MUL_LAMBDA, MUL_LAMBDA.replace("<128, 2,", "<128, 4,")),
    ],
    ids=["vector-width", "triton-index", "unroll"],
)
def test_the_same_kernel_instantiated_otherwise_by_another_build_matches_by_its_name(one, other):
    assert kernel_name(one).name == kernel_name(other).name
    assert kernel_name(one).detail != kernel_name(other).detail  # what differs is kept


def test_cutlass_kernels_launched_through_one_shim_do_not_all_match_each_other():
    other = CUTLASS.replace("64x64_16x6", "128x128_32x3")
    assert kernel_name(CUTLASS).name != kernel_name(other).name


def cpu_event(ident, name, start, end, parent=None, thread=1, annotation=False):
    """A CPU event as the profiler builds it (torch's own class), its parent linked;
    `annotation`: a record_function's span, as a step's mark is."""
    event = FunctionEvent(ident, name, thread, start, end, is_user_annotation=annotation)
    if parent is not None:
        event.set_cpu_parent(parent)
        parent.append_cpu_child(event)
    return event


def device_event(ident, name, start, duration, annotation=False):
    """A device event: a kernel, or (`annotation`) a record_function's span on the device."""
    return FunctionEvent(
        ident,
        name,
        7,
        start,
        start + duration,
        device_type=DeviceType.CUDA,
        is_user_annotation=annotation,
    )


Links = dict[int, int]  # a device event's id -> its operator's, as `profiled.device_links`


def cuda_step(index: int, t0: float, conv_us: float) -> tuple[list, Links]:
    """One step of a convolution and a pooling, the pooling's backward on the autograd
    engine's own thread (as on a GPU), and a kernel no operator launched (a graph replay).
    Around them, what is no work: the mark's and the optimizer's spans on the device, and a
    call into the runtime whose id (the device API's) is that of the pooling's operator."""
    n = 100 * (index + 1)
    mark = cpu_event(n, f"{STEP_MARK}#{index}", t0, t0 + 1000, annotation=True)
    conv2d = cpu_event(n + 1, "aten::conv2d", t0 + 10, t0 + 200, mark)
    conv = cpu_event(n + 2, "aten::_convolution", t0 + 20, t0 + 190, conv2d)
    cudnn = cpu_event(n + 3, "aten::cudnn_convolution", t0 + 30, t0 + 180, conv)
    pool = cpu_event(n + 4, "aten::max_pool2d", t0 + 210, t0 + 260, mark)
    pool_i = cpu_event(n + 5, "aten::max_pool2d_with_indices", t0 + 215, t0 + 255, pool)
    engine = "autograd::engine::evaluate_function: MaxPool2DWithIndicesBackward0"
    backward = cpu_event(n + 6, engine, t0 + 400, t0 + 500, thread=2)
    pool_b = cpu_event(
        n + 7, "aten::max_pool2d_with_indices_backward", t0 + 410, t0 + 490, backward
    )
    sgd = cpu_event(n + 8, "Optimizer.step#SGD.step", t0 + 650, t0 + 750, mark, annotation=True)
    record = cpu_event(n + 5, "cudaEventRecord", t0 + 1, t0 + 3, mark)
    launched = [
        (device_event(n + 50, NCHW_TO_NHWC, t0 + 300, 5), cudnn),
        (device_event(n + 51, XMMA, t0 + 305, conv_us), cudnn),
        (device_event(n + 52, MAX_POOL, t0 + 400, 20), pool_i),
        (device_event(n + 53, MAX_POOL.replace("forward", "backward"), t0 + 600, 30), pool_b),
        (device_event(n + 54, ADD_4, t0 + 700, 10), None),
        (device_event(n + 60, mark.name, t0 + 5, 990, annotation=True), None),
        (device_event(n + 61, sgd.name, t0 + 690, 30, annotation=True), sgd),
    ]
    events = [mark, conv2d, conv, cudnn, pool, pool_i, backward, pool_b, sgd, record]
    links = {e.id: op.id if op else 0 for e, op in launched}
    return events + [e for e, _ in launched], links


def cuda_events() -> tuple[list, Links]:
    """Two steps; before them, a warm-up step in no mark, whose kernel is in no step."""
    warm = cpu_event(1, "aten::add_", -500, -400)
    add = device_event(2, ADD_4, -450, 99)
    (first, first_links), (second, second_links) = cuda_step(0, 0, 60), cuda_step(1, 2000, 80)
    return [warm, add, *first, *second], {add.id: warm.id, **first_links, **second_links}


def cuda_profile(steps: list[float]) -> Profile:
    events, links = cuda_events()
    return profiled.aggregate(events, steps, "cuda", links)


def test_on_cuda_each_kernels_device_time_is_under_the_operator_that_launched_it_per_step():
    p = cuda_profile([0.9e-3, 1.0e-3])
    conv = p.kernels["aten::cudnn_convolution"]
    assert conv[XMMA] == pytest.approx([60e-6, 80e-6])
    assert conv["cudnn::engines_precompiled::nchwToNhwcKernel"] == pytest.approx([5e-6, 5e-6])
    assert p.operators["aten::cudnn_convolution"] == pytest.approx([65e-6, 85e-6])
    assert p.parents["aten::cudnn_convolution"] == "aten::_convolution"
    assert p.details["at::native::max_pool_forward_nchw"] == "<float, float>"
    assert p.step == [0.9e-3, 1.0e-3]


def test_on_cuda_an_operators_inclusive_time_adds_the_kernels_of_the_operators_nested_in_it():
    p = cuda_profile([1e-3, 1e-3])
    assert p.inclusive["aten::conv2d"] == pytest.approx([65e-6, 85e-6])
    assert "aten::conv2d" not in p.operators  # it launched nothing itself
    assert p.inclusive["aten::max_pool2d"] == pytest.approx([20e-6, 20e-6])


def test_a_backward_on_the_autograd_engines_own_thread_is_in_the_step_it_ran_in():
    p = cuda_profile([1e-3, 1e-3])
    backward = "aten::max_pool2d_with_indices_backward"
    assert p.operators[backward] == pytest.approx([30e-6, 30e-6])
    assert p.parents[backward].endswith("MaxPool2DWithIndicesBackward0")


def test_device_work_no_operator_launched_is_outside_them_and_outside_the_steps_is_left_out():
    p = cuda_profile([1e-3, 1e-3])
    assert p.operators[OUTSIDE] == pytest.approx([10e-6, 10e-6])  # not the warm-up's 99 us
    assert "aten::add_" not in p.operators
    total = sum(sum(v) for v in p.operators.values())
    assert total == pytest.approx(2 * (5 + 20 + 30 + 10) * 1e-6 + (60 + 80) * 1e-6)


def test_on_cuda_record_function_spans_on_the_device_and_runtime_calls_are_no_operators_work():
    p = cuda_profile([1e-3, 1e-3])
    # The runtime call shares its id with aten::max_pool2d_with_indices, which keeps its kernel.
    assert p.operators["aten::max_pool2d_with_indices"] == pytest.approx([20e-6, 20e-6])
    assert not any(profiled.RUNTIME_CALL.match(op) for op in p.operators)
    kernels = {k for per_op in p.kernels.values() for k in per_op}
    assert not any(k.startswith((STEP_MARK, "Optimizer.step")) for k in kernels), kernels
    assert "Optimizer.step#SGD.step" not in p.operators


def test_the_profilers_own_results_give_the_device_links_on_this_torch():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torch.ones(4).add_(1)
    assert profiled.device_links(profiler) == {}  # no device event here; the call must work


def test_on_the_cpu_an_operators_self_time_leaves_out_its_children_and_counts_nesting_once():
    mark = cpu_event(1, f"{STEP_MARK}#0", 0, 100)
    linear = cpu_event(2, "aten::linear", 10, 60, mark)
    outer = cpu_event(3, "aten::copy_", 20, 40, linear)
    inner = cpu_event(4, "aten::copy_", 25, 35, outer)  # a copy_ inside a copy_
    other = cpu_event(5, "aten::add_", 30, 45, thread=2)  # another thread, in the step's time
    p = profiled.aggregate([mark, linear, outer, inner, other], [100e-6], "cpu")
    assert p.operators["aten::linear"] == pytest.approx([30e-6])
    assert p.operators["aten::copy_"] == pytest.approx([20e-6])  # 10 of each
    assert p.inclusive["aten::copy_"] == pytest.approx([20e-6])  # the outer one's, once
    assert p.operators["aten::add_"] == pytest.approx([15e-6])
    assert p.parents == {"aten::linear": None, "aten::copy_": "aten::linear", "aten::add_": None}


def test_events_are_refused_when_their_step_marks_do_not_match_the_steps_timed():
    with pytest.raises(RuntimeError, match="2 step marks among the events, for 3 steps"):
        cuda_profile([1e-3] * 3)


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    """Three real steps of the tutorial's step at batch 2, profiled, their trace written."""
    case = cases.build(StepOptions(), "cpu", 2)
    case.step()
    trace = tmp_path_factory.mktemp("trace") / "steps.json"
    return profiled.profile_steps(case.step, case.device, 3, str(trace))


@pytest.mark.parametrize(
    "operator, parent",
    [
        ("aten::convolution", "aten::conv2d"),
        ("aten::max_pool2d_with_indices", "aten::max_pool2d"),
        ("aten::addmm", "aten::linear"),
        ("aten::convolution_backward", None),
    ],
    ids=["convolution", "pooling", "linear", "convolution-backward"],
)
def test_a_profiled_cpu_step_has_each_operator_of_the_net_with_a_positive_self_time(
    cpu_profile, operator, parent
):
    assert len(cpu_profile.operators[operator]) == 3
    assert all(seconds > 0 for seconds in cpu_profile.operators[operator])
    assert all(
        i >= s for i, s in zip(cpu_profile.inclusive[operator], cpu_profile.operators[operator])
    )
    if parent:
        assert cpu_profile.parents[operator] == parent


def test_a_profiled_cpu_steps_operators_fit_in_the_steps_time(cpu_profile):
    for i, seconds in enumerate(cpu_profile.step):
        own = sum(steps[i] for steps in cpu_profile.operators.values())
        assert 0 < own <= seconds * 1.01, (i, own, seconds)  # 1%: two clocks, read apart


def test_a_profiled_rounds_trace_is_written_for_perfetto_with_its_steps_marked(cpu_profile):
    with open(cpu_profile.trace) as f:
        events = json.load(f)["traceEvents"]
    marks = {e["name"] for e in events if e.get("name", "").startswith(STEP_MARK)}
    assert marks == {f"{STEP_MARK}#{i}" for i in range(3)}


def test_a_profile_goes_through_json_and_back_unchanged(cpu_profile):
    assert Profile.from_dict(json.loads(json.dumps(cpu_profile.as_dict()))) == cpu_profile


def good_profile() -> dict:
    return Profile(
        "cpu", [1.0, 2.0], {"aten::add_": [0.5, 0.5]}, {}, {"aten::add_": None}
    ).as_dict()


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d["operators"].update({"aten::mul": [0.5]}), "not 2 per step"),
        (lambda d: d["operators"].update({"aten::mul": [0.5, math.nan]}), "not 2 per step"),
        (lambda d: d["operators"].update({"aten::mul": [0.5, True]}), "not 2 per step"),
        (lambda d: d["operators"].update({"aten::mul": [0.5, -1.0]}), "not 2 per step"),
        (lambda d: d.update(device="tpu"), "its device"),
        (lambda d: d.update(step=[]), "no steps"),
        (lambda d: d.update(kernels=[]), "a table that is not one"),
        (lambda d: d.update(extra=1), "fields"),
        (lambda d: d["parents"].update({"aten::add_": 3}), "not text"),
    ],
    ids=["short", "nan", "bool", "negative", "device", "no-steps", "kernels", "extra", "parent"],
)
def test_a_profile_that_is_not_one_is_refused_naming_what_is_wrong(change, problem):
    data = good_profile()
    change(data)
    with pytest.raises(ValueError, match=f"not a profile of steps: .*{problem}"):
        Profile.from_dict(data)


def test_a_worker_profiles_a_built_case_on_request_from_the_state_it_was_built_in():
    # In this process: the profile request as a worker answers it, without starting one.
    case = cases.build(StepOptions(), "cpu", 1)
    built = [p.detach().clone() for p in case.model.parameters()]
    held = Held({case.key: case})
    handle({"op": "round", "key": case.key, "steps": 2}, held)
    reply = handle({"op": "profile", "key": case.key, "steps": 2}, held)
    assert reply_problem("profile", reply) is None  # the controller takes it
    profile = Profile.from_dict(json.loads(json.dumps(reply["profile"])))
    assert profile.steps == 2 and profile.device == "cpu"
    assert profile.operators["aten::max_pool2d_with_indices"][1] > 0
    case.restore()
    assert all(torch.equal(a, b) for a, b in zip(built, case.model.parameters()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_profiled_cuda_step_has_the_convolution_and_pooling_kernels_under_their_operators():
    case = cases.build(StepOptions(), "cuda", 64)
    for _ in range(3):
        case.step()
    p = profiled.profile_steps(case.step, case.device, 3)
    pooling = p.kernels["aten::max_pool2d_with_indices"]
    assert any("max_pool_forward" in k for k in pooling), sorted(pooling)
    assert all(v > 0 for steps in pooling.values() for v in steps)
    convolution = [op for op in p.kernels if "convolution" in op]
    assert convolution, sorted(p.kernels)
    kernels = {k for per_op in p.kernels.values() for k in per_op}
    assert not any(k.startswith((STEP_MARK, "Optimizer.")) for k in kernels), sorted(kernels)
    assert not any(profiled.RUNTIME_CALL.match(op) for op in p.operators), sorted(p.operators)
    for i, seconds in enumerate(p.step):
        kernels = sum(steps[i] for steps in p.operators.values())
        # One stream: the kernels run one after another inside the step's CUDA events.
        assert 0 < kernels <= seconds * 1.01, (i, kernels, seconds)
