"""The task command lines (host and Apptainer), sbatch parameters, and the image definition.

Apptainer cannot be installed here, so the container path is tested by what it generates: the
exact command, the job script (parsed by bash, and run with a stand-in ``srun``), and the
definition file's sections.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tunevlseg.cluster.container import bind_paths, python_command, setup_lines, task_environment
from tunevlseg.cluster.submit import array_parameters, collector_parameters, render_array_script
from tunevlseg.config.loader import ConfigError, parse_experiment
from tunevlseg.config.schema import ClusterSettings, ContainerSettings, SlurmSettings

ROOT = Path(__file__).resolve().parents[1]


def test_host_command_is_this_python_with_the_environment_exported() -> None:
    environment = task_environment(Path("/shared/hf"))
    assert python_command(ContainerSettings(), environment, []) == shlex.quote(sys.executable)
    assert setup_lines(ContainerSettings(), environment) == [
        "export HF_HOME=/shared/hf",
        "export HF_HUB_OFFLINE=1",
        "export PYTHONNOUSERSITE=1",
    ]


def test_tasks_get_the_storage_retry_budget() -> None:
    environment = task_environment(Path("/shared/hf"), storage_retry_s=240)
    assert "export TVLS_STORAGE_RETRY_S=240" in setup_lines(ContainerSettings(), environment)
    container = ContainerSettings(image=Path("/shared/img/tunevlseg.sif"))
    assert "--env TVLS_STORAGE_RETRY_S=240" in python_command(container, environment, [])


def test_container_command_is_exactly_this() -> None:
    container = ContainerSettings(image=Path("/shared/img/tunevlseg.sif"), binds=["/scratch"])
    environment = task_environment(Path("/shared/hf"))
    binds = bind_paths(
        [Path("/shared/runs/med"), Path("/shared/hf"), Path("/data/kvasir")], container.binds
    )
    command = python_command(container, environment, binds)
    assert command == (
        "apptainer exec --nv --bind /data/kvasir --bind /shared/hf --bind /shared/runs/med "
        "--bind /scratch --env HF_HOME=/shared/hf --env HF_HUB_OFFLINE=1 "
        "--env PYTHONNOUSERSITE=1 /shared/img/tunevlseg.sif python3"
    )
    assert "--cleanenv" not in command
    assert setup_lines(container, environment) == []  # the container gets --env instead


def test_binds_drop_duplicates_and_nested_folders() -> None:
    binds = bind_paths([Path("/a/b"), Path("/a"), Path("/a/b/c"), Path("/ab"), Path("/a")])
    assert binds == ["/a", "/ab"]


def test_array_parameters_carry_the_site_settings() -> None:
    cluster = ClusterSettings(
        parallelism=6,
        timeout_min=90,
        slurm=SlurmSettings(
            partition="gpu",
            account="lab",
            qos="normal",
            gpus=2,
            gpu_type="a100",
            cpus_per_task=4,
            mem_gb=12.5,
            constraint="ampere",
            signal_delay_s=300,
            extra={"reservation": "week", "exclusive": True},
        ),
    )
    parameters = array_parameters(cluster, "tvls-med", ["export X=1"])
    assert parameters == {
        "job_name": "tvls-med",
        "time": 90,
        "cpus_per_task": 4,
        "mem": "12800MB",
        "signal_delay_s": 300,
        "array_parallelism": 6,
        "setup": ["export X=1"],
        "additional_parameters": {"requeue": True, "reservation": "week", "exclusive": True},
        "partition": "gpu",
        "account": "lab",
        "qos": "normal",
        "constraint": "ampere",
        "gres": "gpu:a100:2",
    }
    collector = collector_parameters(cluster, "tvls-med", [], ["11", "12"])
    assert collector["additional_parameters"] == {"dependency": "afterany:11:12"}
    assert "gres" not in collector


def test_job_script_quotes_hostile_values(tmp_path: Path) -> None:
    """Run the rendered script with a stand-in srun: nothing from the values may execute."""
    marker = tmp_path / "injected"
    evil = f"a b;$(touch {marker})`touch {marker}`'\"q"
    cluster = ClusterSettings(
        slurm=SlurmSettings(partition=evil, account=evil, extra={"comment": evil})
    )
    environment = task_environment(tmp_path / evil)
    parameters = array_parameters(cluster, "tvls-x", setup_lines(ContainerSettings(), environment))
    folder = tmp_path / evil / "jobs" / "%j"
    script = render_array_script(folder, shlex.quote(sys.executable), parameters, 3)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    record = tmp_path / "srun-args"
    stand_in = f'srun() {{ printf "%s\\n" "$@" > {shlex.quote(str(record))}; }}\n'
    body = script.replace("#!/bin/bash", "#!/bin/bash\n" + stand_in, 1)
    done = subprocess.run(["bash", "-c", body], text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    args = record.read_text().splitlines()
    assert args[-5:] == [sys.executable, "-u", "-m", "submitit.core._submit", str(folder)]
    sbatch_lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --partition={shlex.quote(evil)}" in sbatch_lines
    assert f"#SBATCH --comment={shlex.quote(evil)}" in sbatch_lines


@pytest.mark.parametrize(
    ("cluster_yaml", "key", "fragment"),
    [
        ("slurm: {extra: {'x; rm -rf /': 1}}", "cluster.slurm.extra", "not an sbatch option name"),
        ("slurm: {extra: {array: '0-3'}}", "cluster.slurm.extra", "set by tunevlseg"),
        ('slurm: {partition: "gpu\\nhostname"}', "cluster.slurm.partition", "should match pattern"),
        ("container: {binds: ['/a,/b']}", "cluster.container.binds", "without ','"),
        (
            "container: {apptainer: 'apptainer; id'}",
            "cluster.container.apptainer",
            "should match pattern",
        ),
    ],
)
def test_unsafe_cluster_values_are_refused(
    tmp_path: Path, cluster_yaml: str, key: str, fragment: str
) -> None:
    text = (
        "name: t\noutput_dir: o\nmodels: [clipseg]\nlearners: [coop]\n"
        "datasets: [{name: d, root: d}]\ncluster:\n  " + cluster_yaml + "\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_experiment(text, tmp_path / "t.yaml")
    assert f"{key}" in str(caught.value) and fragment in str(caught.value)


def _sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = "header"
    for line in text.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            current = match.group(1)
            sections[current] = ""
        else:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_apptainer_definition() -> None:
    sections = _sections((ROOT / "Apptainer.def").read_text())
    header = dict(
        line.split(":", 1) for line in sections["header"].splitlines() if re.match(r"^\w+:", line)
    )
    assert header["Bootstrap"].strip() == "docker"
    assert re.search(r"pytorch/pytorch:[\d.]+-cuda[\d.]+", header["From"])
    assert {"arguments", "files", "post", "environment", "runscript", "test"} <= set(sections)
    for source in ("pyproject.toml", "tunevlseg", "scripts/constraints.txt"):
        assert (ROOT / source).exists() and re.search(
            rf"^\s+{source} /opt/tunevlseg", sections["files"], re.MULTILINE
        )
    install = " ".join(sections["post"].replace("\\\n", " ").split())
    # the tested versions of every package, as in the test environment (scripts/setup-venv.sh)
    assert (
        'pip install --constraint /opt/tunevlseg/constraints.txt "/opt/tunevlseg[postgres]" '
        '"submitit=={{ SUBMITIT_VERSION }}"'
    ) in install
    assert "export PYTHONNOUSERSITE=1" in sections["environment"]
    assert "--cleanenv" not in (ROOT / "Apptainer.def").read_text()
    assert "slurm" not in sections["post"].lower()  # requeued from the host (requeue.py)


def test_build_script_pins_the_host_submitit() -> None:
    import submitit

    done = subprocess.run(
        ["bash", str(ROOT / "containers" / "build.sh"), "--print", "/tmp/x.sif"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "apptainer",
        "build",
        "--build-arg",
        f"SUBMITIT_VERSION={submitit.__version__}",
        "/tmp/x.sif",
        "Apptainer.def",
    ]


# --- Requeue from the host (the image has no SLURM client): tunevlseg.cluster.requeue ---------

SLURM_IDS = {"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}
HOSTILE = "a b;$(touch x)`touch y`'\"q,r"

# What the task does on USR2 inside the "image": submitit's path (install, then _requeue, then
# exit -1), with no scontrol on its PATH.
IN_TASK = """\
import os, signal, sys, time
os.environ["PATH"] = ""
from submitit.slurm.slurm import SlurmJobEnvironment
from tunevlseg.cluster import requeue
assert requeue.install()
assert os.environ["APPTAINERENV_TVLS_REQUEUE_DIR"] == os.environ["TVLS_REQUEUE_DIR"]
def on_usr2(signum, frame):
    SlurmJobEnvironment()._requeue(2)
    sys.exit(-1)
signal.signal(signal.SIGUSR2, on_usr2)
if sys.argv[1] == "signal":
    print("ready", flush=True)
    time.sleep(60)
    sys.exit(1)
on_usr2(signal.SIGUSR2, None)
"""


def _fake_scontrol(folder: Path, exit_code: int = 0) -> tuple[dict[str, str], Path]:
    """An environment whose ``scontrol`` records its arguments (the host's SLURM client)."""
    bin_dir = folder / "host-bin"
    bin_dir.mkdir(exist_ok=True)
    record = folder / "scontrol-args"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(record))}\nexit {exit_code}\n')
    script.chmod(0o755)
    import os

    return {**os.environ, **SLURM_IDS, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, record


def _task_line(marker_dir: Path, *args: str) -> str:
    """The wrapper around this Python, as submitit's job script line runs it (through a shell)."""
    from tunevlseg.cluster.requeue import host_wrapper

    return (
        shlex.join(host_wrapper(marker_dir, [sys.executable]))
        + " "
        + shlex.join(["-c", IN_TASK, *args])
    )


def test_container_command_is_wrapped_to_requeue_from_the_host() -> None:
    from tunevlseg.cluster.requeue import WRAPPER

    container = ContainerSettings(image=Path("/shared/img/tunevlseg.sif"))
    environment = task_environment(Path("/shared/hf"))
    requeue_dir = Path(f"/shared/runs/{HOSTILE}/jobs/requeue")
    command = python_command(container, environment, ["/shared/hf"], requeue_dir=requeue_dir)
    assert shlex.split(command) == [
        "bash",
        "-c",
        WRAPPER,
        "tvls-requeue",
        str(requeue_dir),
        "apptainer",
        "exec",
        "--nv",
        "--bind",
        "/shared/hf",
        "--env",
        "HF_HOME=/shared/hf",
        "--env",
        "HF_HUB_OFFLINE=1",
        "--env",
        "PYTHONNOUSERSITE=1",
        "/shared/img/tunevlseg.sif",
        "python3",
    ]
    assert "'" not in WRAPPER  # one plain quoted word in the job script
    assert command.startswith(f"bash -c {shlex.quote(WRAPPER)} tvls-requeue ")
    # Host Python requeues itself (scontrol is there): never wrapped.
    assert python_command(
        ContainerSettings(), environment, [], requeue_dir=requeue_dir
    ) == shlex.quote(sys.executable)


@pytest.mark.parametrize(
    ("ids", "name"),
    [
        (SLURM_IDS, "12_3"),
        ({"SLURM_JOB_ID": "15"}, "15"),
        ({"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "", "SLURM_ARRAY_TASK_ID": ""}, "15"),
    ],
)
def test_marker_is_named_by_submitits_job_id_and_the_wrapper_finds_it(
    tmp_path: Path, ids: dict[str, str], name: str
) -> None:
    """Task side (submitit's job_id, in Python) and host side (bash) agree on the marker."""
    from tunevlseg.cluster.requeue import marker_path

    env, record = _fake_scontrol(tmp_path)
    env = {key: value for key, value in env.items() if key not in SLURM_IDS} | ids
    marker_dir = tmp_path / "requeue"
    done = subprocess.run(
        ["bash", "-c", _task_line(marker_dir, "now")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 255, done.stderr
    assert record.read_text() == f"requeue {name}\n"
    assert marker_path(marker_dir, name) == marker_dir / name
    for bad in ("", "../12_3", ".", "a/b"):
        with pytest.raises(ValueError, match="not a SLURM job id"):
            marker_path(marker_dir, bad)


def test_wrapper_requeues_a_marked_task_from_the_host(tmp_path: Path) -> None:
    """The task writes the marker and exits -1; the wrapper requeues it with the host's scontrol."""
    env, record = _fake_scontrol(tmp_path)
    marker_dir = tmp_path / HOSTILE / "requeue"
    done = subprocess.run(
        ["bash", "-c", _task_line(marker_dir, "now")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 255, done.stderr  # submitit's sys.exit(-1), passed on
    assert record.read_text() == "requeue 12_3\n"
    assert list(marker_dir.iterdir()) == []
    assert "tvls-requeue: requeued 12_3 from the host" in done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_wrapper_outlives_usr2_to_the_whole_step(tmp_path: Path) -> None:
    """SLURM signals every process of the step: the wrapper must survive it to requeue."""
    import os
    import signal

    env, record = _fake_scontrol(tmp_path)
    marker_dir = tmp_path / "requeue"
    task = subprocess.Popen(
        ["bash", "-c", _task_line(marker_dir, "signal")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert task.stdout is not None and task.stdout.readline() == "ready\n"
    os.killpg(task.pid, signal.SIGUSR2)
    _, stderr = task.communicate(timeout=60)
    assert task.returncode == 255, stderr
    assert record.read_text() == "requeue 12_3\n"


def test_wrapper_without_marker_passes_the_status_and_drops_stale_markers(tmp_path: Path) -> None:
    from tunevlseg.cluster.requeue import host_wrapper

    env, record = _fake_scontrol(tmp_path)
    marker_dir = tmp_path / "requeue"
    marker_dir.mkdir()
    (marker_dir / "12_3").write_text("left by a run whose wrapper was killed\n")
    (marker_dir / "12_4").write_text("another task's\n")
    line = shlex.join(host_wrapper(marker_dir, [sys.executable])) + " -c 'raise SystemExit(3)'"
    done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert not record.exists()
    assert [p.name for p in marker_dir.iterdir()] == ["12_4"]


def test_install_only_behind_the_wrapper_and_keeps_a_working_scontrol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from submitit.slurm.slurm import SlurmJobEnvironment

    from tunevlseg.cluster import requeue

    monkeypatch.setattr(
        SlurmJobEnvironment, "_requeue", SlurmJobEnvironment._requeue
    )  # restored after
    original = SlurmJobEnvironment._requeue
    assert not requeue.install({})
    assert SlurmJobEnvironment._requeue is original
    marker_dir = tmp_path / "requeue"
    for key, value in SLURM_IDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(requeue.MARKER_DIR_ENV, str(marker_dir))
    assert requeue.install() and requeue.install()
    assert SlurmJobEnvironment._requeue is requeue._requeue_through_host

    env, record = _fake_scontrol(tmp_path)  # an image with a working SLURM client: submitit's call
    monkeypatch.setenv("PATH", env["PATH"])
    SlurmJobEnvironment()._requeue(1)
    assert record.read_text() == "requeue 12_3\n" and not marker_dir.exists()

    _fake_scontrol(tmp_path, exit_code=1)  # a client that cannot reach slurmctld: the host's turn
    SlurmJobEnvironment()._requeue(1)
    assert (marker_dir / "12_3").is_file()

    (marker_dir / "12_3").unlink()
    monkeypatch.setenv("PATH", "")  # no client at all
    SlurmJobEnvironment()._requeue(0)
    assert (marker_dir / "12_3").read_text().startswith("requeue 12_3 (remaining time-outs 0)")


def test_submitted_worker_installs_the_hook_before_submitit_requeues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle
    from submitit.slurm.slurm import SlurmJobEnvironment

    from tunevlseg.cluster import requeue
    from tunevlseg.cluster.worker import TrialTask, TrialWorker

    monkeypatch.setattr(SlurmJobEnvironment, "_requeue", SlurmJobEnvironment._requeue)
    task = TrialTask("journal:///x", "s", 1)
    worker = requeue.HostRequeueWorker()
    assert isinstance(worker, TrialWorker)
    monkeypatch.setenv(requeue.MARKER_DIR_ENV, str(tmp_path))
    delayed = worker.checkpoint(task)  # what submitit's USR2 handler calls right before _requeue
    assert SlurmJobEnvironment._requeue is requeue._requeue_through_host
    again = cloudpickle.loads(cloudpickle.dumps(delayed))
    assert type(again.function) is requeue.HostRequeueWorker and again.args == (task,)


def test_job_script_runs_the_wrapper_with_hostile_folders(tmp_path: Path) -> None:
    """The rendered array script, run with a stand-in srun: the words reach srun intact."""
    from tunevlseg.cluster.requeue import WRAPPER

    marker = tmp_path / "injected"
    evil = f"a b;$(touch {marker})`touch {marker}`'\"q"
    folder = tmp_path / evil / "jobs" / "%j"
    container = ContainerSettings(image=tmp_path / evil / "img.sif")
    environment = task_environment(tmp_path / evil / "hf")
    python = python_command(
        container, environment, [str(tmp_path / evil)], requeue_dir=folder.parent / "requeue"
    )
    parameters = array_parameters(ClusterSettings(), "tvls-x", setup_lines(container, environment))
    script = render_array_script(folder, python, parameters, 2)
    command_lines = [line for line in script.splitlines() if line.startswith("srun ")]
    assert (
        len(command_lines) == 1
        and f" bash -c {shlex.quote(WRAPPER)} tvls-requeue " in command_lines[0]
    )
    record = tmp_path / "srun-args"
    stand_in = f'srun() {{ printf "%s\\0" "$@" > {shlex.quote(str(record))}; }}\n'
    done = subprocess.run(
        ["bash", "-c", script.replace("#!/bin/bash", "#!/bin/bash\n" + stand_in, 1)],
        text=True,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    args = record.read_text().split("\0")[:-1]
    start = args.index("bash")
    assert args[start : start + 6] == [
        "bash",
        "-c",
        WRAPPER,
        "tvls-requeue",
        str(folder.parent / "requeue"),
        "apptainer",
    ]
    assert args[-6:] == [
        str(container.image),
        "python3",
        "-u",
        "-m",
        "submitit.core._submit",
        str(folder),
    ]


@pytest.mark.usefixtures("slurm_cluster")  # a dry run checks SLURM like a launch
def test_dry_run_shows_the_wrapper(tmp_path: Path) -> None:
    from _slurm_sweeps import cli, write_sweep

    from tunevlseg.cluster.requeue import WRAPPER
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.paths import SweepPaths

    experiment = write_sweep(tmp_path / "exp", name="dry", output_dir="../runs/it's dry")
    experiment.write_text(experiment.read_text() + "  container: {image: /img/tvls.sif}\n")
    dry = cli("tunevlseg.cli.launch", str(experiment), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    requeue_dir = SweepPaths.of(load_experiment(experiment)).jobs / "requeue"
    wrapper = f"bash -c {shlex.quote(WRAPPER)} tvls-requeue {shlex.quote(str(requeue_dir))} apptainer exec --nv "
    lines = dry.stdout.splitlines()
    interpreter = lines[lines.index("# Interpreter command of every task") + 1]
    assert interpreter.startswith(wrapper) and interpreter.endswith(" /img/tvls.sif python3")
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 2 and all(
        f" {wrapper}" in line for line in srun
    )  # the array and the collector
    assert not (tmp_path / "runs").exists()
