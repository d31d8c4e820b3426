"""A real deployment on localhost: SuperLink with TLS and SuperNode authentication, three SuperNodes
each serving its own hospital's data through --node-config; SuperNodes that must be turned away (a key
never registered, plaintext with and without a key, another CA, a SuperLink with an expired certificate);
a second run that resumes the first; a SuperNode killed mid-round that rejoins. Follows the commands
documented in README.md."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedclip import models
from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ssh-keygen") is None or shutil.which("openssl") is None,
                                 reason="needs openssl and ssh-keygen")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(port: int, ca: Path) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _expired_certificate(certs: Path, out: Path) -> None:
    """A SuperLink certificate signed by the consortium's CA that expired yesterday."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedclip-superlink")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir()
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


def test_tls_authenticated_deployment_with_three_hospitals(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(certs)], check=True, capture_output=True)
    hospitals = ["riverside", "northgate", "summit"]
    for i, h in enumerate(hospitals):
        export(CohortSpec(seed=20 + i, size=64, hospital=h, diabetic_rate=0.7), tmp_path / f"data-{h}", 40)
    export(CohortSpec(seed=30, size=64, hospital="lakeshore"), tmp_path / "eval", 24)
    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "ckpt")

    port = _port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-cli"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    (tmp_path / "flwr-cli").mkdir()
    (tmp_path / "flwr-cli" / "config.toml").write_text(
        f'[superlink.deploy]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    procs: list[subprocess.Popen] = []

    def start(cmd, log, extra_env=None):
        fh = open(tmp_path / log, "w")
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**env, **(extra_env or {})},
                             cwd=tmp_path, start_new_session=True)
        procs.append(p)
        return p

    try:
        start(["flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
               str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth",
               "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port),
               "--database", str(tmp_path / "state.db")], "superlink.log")
        _wait(lambda: _healthy(port, certs / "ca.crt"), 60, "the SuperLink")

        for name in ("node0", "node1", "node2", "rogue"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(tmp_path / name)],
                           check=True)
        for i in range(3):  # the consortium registers its hospitals' keys; the rogue key never is
            subprocess.run(["flwr", "supernode", "register", str(tmp_path / f"node{i}.pub"), "deploy"], env=env,
                           check=True, capture_output=True, cwd=tmp_path)
        # each hospital owns its privacy policy, on its own disk: the first declares its dataset size public,
        # the last allows at most epsilon 4 and so refuses a run that asks for 8
        # (the first two allow a lifetime epsilon of 20: the fault run at the end asks for 16 in all)
        policies = ["dataset_size = 60\nmax_epsilon = 20.0", "max_epsilon = 20.0", "max_epsilon = 4.0"]
        for h, policy in zip(hospitals, policies, strict=True):
            (tmp_path / f"state-{h}").mkdir()
            (tmp_path / f"state-{h}" / "policy.toml").write_text(f"[policy]\n{policy}\n")

        def start_node(i: int, log: str) -> subprocess.Popen:
            h = hospitals[i]
            node_config = (f'partition-id={i} num-partitions=3 data-dir="{tmp_path / f"data-{h}"}" '
                           f'state-dir="{tmp_path / f"state-{h}"}"')
            return start(["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                          str(certs / "ca.crt"), "--auth-supernode-private-key", str(tmp_path / f"node{i}"),
                          "--port", str(_port()), "--node-config", node_config], log,
                         {"FLWR_HOME": str(tmp_path / f"home{i}")})
        nodes = [start_node(i, f"node{i}.log") for i in range(3)]

        # An unregistered key is turned away (exit code 305). The node's helper process may linger, so
        # the test reads the log rather than waiting for every process of the node to end.
        rogue = start(["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                       str(certs / "ca.crt"), "--auth-supernode-private-key", str(tmp_path / "rogue"),
                       "--port", str(_port()), "--node-config", "partition-id=9 num-partitions=3"], "rogue.log",
                      {"FLWR_HOME": str(tmp_path / "home-rogue")})
        _wait(lambda: "Failed to activate SuperNode" in (tmp_path / "rogue.log").read_text(), 120,
              "the unregistered SuperNode to be rejected")
        assert "Exit Code: 305" in (tmp_path / "rogue.log").read_text()
        os.killpg(rogue.pid, signal.SIGTERM)

        # Transport faults, each turned away with its reason in the node's log: a plaintext node with a
        # key (refused before it connects: authentication needs TLS), a plaintext node without one (the
        # handshake never completes; it keeps retrying and never joins), a node that trusts another CA.
        other = tmp_path / "other-ca"
        subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(other)], check=True, capture_output=True)
        faults = {
            "plaintext-with-key": (["--insecure", "--auth-supernode-private-key", str(tmp_path / "node0")],
                                   "SuperNode authentication requires a secure TLS connection"),
            "plaintext": (["--insecure"], "Connection attempt failed"),
            "other-ca": (["--root-certificates", str(other / "ca.crt"), "--auth-supernode-private-key",
                          str(tmp_path / "node0")], "certificate verify failed: unable to get local issuer"),
        }
        for name, (flags, reason) in faults.items():
            bad = start(["flower-supernode", "--superlink", f"127.0.0.1:{port}", *flags, "--port", str(_port())],
                        f"{name}.log", {"FLWR_HOME": str(tmp_path / f"home-{name}")})
            _wait(lambda n=name, r=reason: r in (tmp_path / f"{n}.log").read_text(), 120, f"the {name} node's refusal")
            os.killpg(bad.pid, signal.SIGTERM)
        # a SuperLink whose certificate has expired is refused by the nodes
        expired_port = _port()
        _expired_certificate(certs, tmp_path / "expired")
        start(["flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
               str(tmp_path / "expired" / "server.pem"), "--ssl-keyfile", str(tmp_path / "expired" / "server.key"),
               "--enable-supernode-auth", "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
               "--port", str(expired_port), "--database", str(tmp_path / "expired.db")], "expired-superlink.log")
        time.sleep(8)  # its health check would itself fail on the expired certificate
        bad = start(["flower-supernode", "--superlink", f"127.0.0.1:{expired_port}", "--root-certificates",
                     str(certs / "ca.crt"), "--auth-supernode-private-key", str(tmp_path / "node0"), "--port",
                     str(_port())], "expired.log", {"FLWR_HOME": str(tmp_path / "home-expired")})
        _wait(lambda: "certificate has expired" in (tmp_path / "expired.log").read_text(), 120,
              "the node to refuse the expired certificate")
        os.killpg(bad.pid, signal.SIGTERM)

        def online() -> int:
            res = subprocess.run(["flwr", "supernode", "ls", "deploy", "--format", "json"], env=env,
                                 capture_output=True, text=True, cwd=tmp_path)
            try:
                nodes = json.loads(res.stdout).get("nodes", [])
            except json.JSONDecodeError:
                return 0
            return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")
        _wait(lambda: online() >= 3, 120, "three online SuperNodes")
        assert online() == 3  # the rogue never joined

        out = tmp_path / "run"
        overrides = (f'checkpoint="{ckpt}" eval-data="{tmp_path / "eval"}" out="{out}" clients=3 '
                     f'finetune.batch-size=16 client-eval=false')

        def submit(extra: str, base: str = overrides) -> str:
            submitted = subprocess.run(["flwr", "run", str(ROOT), "deploy", "--format", "json", "-c",
                                        base + extra], env=env, capture_output=True, text=True, cwd=tmp_path,
                                       timeout=120)
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            return str(json.loads(submitted.stdout)["run-id"])

        def status(run_id: str) -> str:
            res = subprocess.run(["flwr", "ls", "deploy", "--run-id", run_id, "--format", "json"], env=env,
                                 capture_output=True, text=True, cwd=tmp_path)
            try:
                return str(json.loads(res.stdout)["runs"][0]["status"])
            except (json.JSONDecodeError, KeyError, IndexError):
                return ""
        run_id = submit(" rounds=1")
        _wait(lambda: status(run_id).startswith("finished"), 420, "the run to finish")
        assert status(run_id) == "finished:completed", status(run_id)

        summary = json.loads((out / "state.json").read_text())
        assert summary["round"] == 1
        rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        clients = {int(c["partition"]): c for c in rounds[-1]["clients"]}
        assert [clients[i]["status"] for i in range(3)] == ["aggregated", "aggregated", "refused"]
        assert "allows at most 4" in clients[2]["reason"]
        assert clients[0]["num-examples"] == 60  # the declared public size, not the real one
        for h in hospitals[:2]:  # each hospital's ledger lives on its own disk
            (ledger,) = (tmp_path / f"state-{h}").glob("ledger-*.jsonl")
            entry = json.loads(ledger.read_text().splitlines()[-1])
            assert entry["kind"] == "train" and entry["round"] == 1 and 0 < entry["epsilon"] <= 8.0

        # a deployed run resumes through the run config: one more round after the last completed one
        run_id = submit(" rounds=2 resume=true")
        _wait(lambda: status(run_id).startswith("finished"), 420, "the resumed run to finish")
        assert status(run_id) == "finished:completed", status(run_id)
        assert json.loads((out / "state.json").read_text())["round"] == 2
        rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rounds == [0, 1, 2]

        # A SuperNode SIGKILLed in the middle of a round (after it took the round's message, before it
        # answered): the SuperLink reports it unavailable once its heartbeats stop (within ~60 s), the round
        # is aggregated from the other two (min-replies=2), and the next round waits for all three
        # (clients=3) until the hospital restarts its node with the same key and state dir.
        (ledger1,) = (tmp_path / f"state-{hospitals[1]}").glob("ledger-*.jsonl")
        trained_before = sum(json.loads(e)["kind"] == "train" for e in ledger1.read_text().splitlines())
        faults = tmp_path / "run-faults"

        def recorded(run_dir: Path) -> list[dict]:
            path = run_dir / "metrics.jsonl"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        def taken() -> int:  # train messages the second hospital's node has taken so far
            return (tmp_path / "node1.log").read_text().count("Receiving: train message")
        before = taken()
        # the third hospital raises its own lifetime budget (its policy file, read at every round) and joins
        (tmp_path / f"state-{hospitals[2]}" / "policy.toml").write_text("[policy]\nmax_epsilon = 20.0\n")
        run_id = submit(" rounds=3 min-replies=2 finetune.epsilon=16.0",
                        overrides.replace(f'out="{out}"', f'out="{faults}"'))
        _wait(lambda: taken() >= before + 2, 300, "the second hospital to take round 2's message")
        os.killpg(nodes[1].pid, signal.SIGKILL)
        _wait(lambda: len(recorded(faults)) >= 3, 240, "round 2 to finish without the killed node")
        nodes[1] = start_node(1, "node1-restarted.log")
        _wait(lambda: status(run_id).startswith("finished"), 420, "the run with a killed node to finish")
        assert status(run_id) == "finished:completed", status(run_id)
        by_round = {r["round"]: r["clients"] for r in recorded(faults) if r["round"] > 0}
        aggregated = {n: sorted(int(c["partition"]) for c in rows if c["status"] == "aggregated")
                      for n, rows in by_round.items()}
        assert aggregated == {1: [0, 1, 2], 2: [0, 2], 3: [0, 1, 2]}, by_round  # nothing counted twice
        assert [c["status"] for c in by_round[2] if "partition" not in c] == ["error"]  # the killed node
        trained = sum(json.loads(e)["kind"] == "train" for e in ledger1.read_text().splitlines())
        assert 2 <= trained - trained_before <= 3  # rounds 1 and 3, and round 2 if it died after its entry
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
