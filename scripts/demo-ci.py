#!/usr/bin/env python3
"""A demo CI for lineaged, standard library only.

It stands in for the CI system a team would wire lineaged to (GitHub
Actions, GitLab, Jenkins…) so the whole loop runs on one machine:

  seed    push a base image and a three-level lineage built on it
  bump    push a new base image (what an upstream security fix looks like)
  serve   receive lineaged's signed rebuild webhooks (Standard Webhooks),
          "rebuild" each image by pushing a new manifest on the parent's new
          digest (with the OCI base annotations), and call back
  follow  print a rollout as it happens, from lineaged's API

The images are tiny OCI manifests (one config, one layer of text): enough
for a real registry to serve them and for lineaged to track their digests.
Used by scripts/demo.sh and by docker-compose.yml.
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BASE = "demo/base:1"
# image -> parent; three levels on the base, with two children on one parent.
LINEAGE = [
    ("demo/runtime:1", BASE),
    ("demo/api:1", "demo/runtime:1"),
    ("demo/worker:1", "demo/runtime:1"),
    ("demo/api-debug:1", "demo/api:1"),
]


def log(msg):
    print(f"demo-ci: {msg}", flush=True)


# --- registry (OCI distribution API) -------------------------------------

def split_ref(ref):
    """`host:port/repo/name:tag` -> (host:port, repo/name, tag)."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def push_blob(host, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = http("POST", f"http://{host}/v2/{repo}/blobs/uploads/")
    location = headers.get("Location") or headers.get("location")
    if not location.startswith("http"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    http("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", data,
         {"Content-Type": "application/octet-stream"})
    return digest, len(data)


def push_image(ref, seed, base=None):
    """Pushes a small image under `ref`; `base` = (name, digest) sets the OCI
    base annotations, as a real build (docker buildx, kaniko) would."""
    host, repo, tag = split_ref(ref)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.title": repo}},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": seed}],
    }).encode()
    cdigest, csize = push_blob(host, repo, config)
    ldigest, lsize = push_blob(host, repo, f"layer of {repo}: {seed}".encode())
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cdigest, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": ldigest, "size": lsize}],
        "annotations": {"org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    if base:
        manifest["annotations"]["org.opencontainers.image.base.name"] = base[0]
        manifest["annotations"]["org.opencontainers.image.base.digest"] = base[1]
    _, headers, _ = http("PUT", f"http://{host}/v2/{repo}/manifests/{tag}",
                         json.dumps(manifest).encode(), {"Content-Type": OCI_MANIFEST})
    return headers.get("Docker-Content-Digest") or headers.get("docker-content-digest")


def wait_for_registry(host, seconds=60):
    """The registry may still be starting (docker compose)."""
    deadline = time.time() + seconds
    while True:
        try:
            http("GET", f"http://{host}/v2/", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 with auth): up
        except OSError as e:
            if time.time() > deadline:
                raise SystemExit(f"demo-ci: registry {host} not reachable: {e}")
            time.sleep(0.5)


def cmd_seed(args):
    wait_for_registry(args.registry)
    digests = {}
    d = push_image(f"{args.registry}/{BASE}", f"base {time.time()}")
    digests[BASE] = d
    log(f"pushed {args.registry}/{BASE} {d[:19]}…")
    for image, parent in LINEAGE:
        pref = f"{args.registry}/{parent}"
        d = push_image(f"{args.registry}/{image}", f"{image} on {digests[parent]}", (pref, digests[parent]))
        digests[image] = d
        log(f"pushed {args.registry}/{image} {d[:19]}… (FROM {parent})")


def cmd_bump(args):
    wait_for_registry(args.registry)
    d = push_image(f"{args.registry}/{BASE}", f"base, patched {time.time()}")
    log(f"pushed a new {args.registry}/{BASE}: {d}")


# --- the CI: signed webhooks in, rebuilds, callbacks out -----------------

def signing_key(secret):
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


class Ci:
    def __init__(self, secret, build_seconds):
        self.key = signing_key(secret) if secret else None
        self.build_seconds = build_seconds
        self.runs = {}  # webhook-id -> run number (a re-sent trigger is the same run)
        self.logs = {}
        self.lock = threading.Lock()

    def verify(self, headers, body):
        """Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>,
        timestamp within five minutes."""
        if self.key is None:
            return True
        wid = headers.get("webhook-id", "")
        ts = headers.get("webhook-timestamp", "")
        sigs = headers.get("webhook-signature", "").split()
        if not wid or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return False
        mac = hmac.new(self.key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(want, s) for s in sigs)

    def rebuild(self, run, job):
        image = job["image"]
        parent = job["parents"][0] if job.get("parents") else None
        lines = self.logs[run]
        try:
            lines.append(f"rebuilding {image} on {parent['name']}@{parent['digest']}" if parent else f"rebuilding {image}")
            log(f"run {run}: {lines[-1]}")
            time.sleep(self.build_seconds)
            base = (parent["name"], parent["digest"]) if parent and parent.get("digest") else None
            digest = push_image(image, f"{image} run {run} on {base}", base)
            lines.append(f"pushed {image} {digest}")
            body = json.dumps({"status": "succeeded", "digest": digest,
                               "log_url": f"{self.url}/runs/{run}"}).encode()
        except Exception as e:  # the build failed: say so, lineaged blocks the children
            lines.append(f"failed: {e}")
            body = json.dumps({"status": "failed", "log_url": f"{self.url}/runs/{run}"}).encode()
        for attempt in range(5):
            try:
                status, _, _ = http("POST", job["callback_url"], body, {"Content-Type": "application/json"})
                lines.append(f"callback: HTTP {status}")
                log(f"run {run}: {lines[-2]}; callback HTTP {status}")
                return
            except urllib.error.HTTPError as e:
                lines.append(f"callback refused: HTTP {e.code} {e.read()[:200]!r}")
                log(f"run {run}: {lines[-1]}")
                return
            except OSError as e:
                lines.append(f"callback failed ({e}); retrying")
                time.sleep(1 + attempt)


def cmd_serve(args):
    ci = Ci(args.secret, args.build_seconds)
    ci.url = args.public_url or f"http://127.0.0.1:{args.port}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                return self.answer(200, {"ok": True})
            if self.path.startswith("/runs/"):
                run = self.path.rsplit("/", 1)[-1]
                lines = ci.logs.get(int(run)) if run.isdigit() else None
                if lines is None:
                    return self.answer(404, {"error": "no such run"})
                text = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                return self.wfile.write(text)
            self.answer(404, {"error": "not found"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not ci.verify(headers, body):
                log("refused a webhook with a bad signature")
                return self.answer(401, {"error": "bad signature"})
            try:
                job = json.loads(body)
            except ValueError:
                return self.answer(400, {"error": "body is not JSON"})
            if job.get("type") != "rebuild":
                return self.answer(422, {"error": f"this demo CI only rebuilds, not {job.get('type')!r}"})
            if not job.get("image") or not job.get("callback_url"):
                return self.answer(422, {"error": "image and callback_url are required"})
            wid = headers.get("webhook-id") or job.get("idempotency_key", "")
            with ci.lock:
                fresh = wid not in ci.runs
                if fresh:
                    ci.runs[wid] = len(ci.runs) + 1
                    ci.logs[ci.runs[wid]] = []
                run = ci.runs[wid]
            if fresh:
                threading.Thread(target=ci.rebuild, args=(run, job), daemon=True).start()
            else:
                log(f"run {run}: trigger re-sent (same webhook-id); not rebuilt twice")
            self.answer(202, {"run_id": str(run), "run_url": f"{ci.url}/runs/{run}"})

    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    log(f"listening on {args.listen}:{args.port} (signed webhooks: {'yes' if ci.key else 'no'})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


# --- follow a rollout ------------------------------------------------------

def get(api, path, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    _, _, body = http("GET", f"{api}{path}", headers=headers)
    return json.loads(body)


def cmd_follow(args):
    """Waits for a rollout newer than --after, prints each image's state
    changes, and exits 0 when it succeeded (1 otherwise, 2 on timeout)."""
    deadline = time.time() + args.timeout
    rollout = None
    while rollout is None:
        if time.time() > deadline:
            log("no rollout started")
            return 2
        items = get(args.api, "/api/v1/rollouts?limit=5", args.token)["rollouts"]
        fresh = [r for r in items if r["id"] > args.after]
        if fresh:
            rollout = min(fresh, key=lambda r: r["id"])
        else:
            time.sleep(0.5)
    rid = rollout["id"]
    cause = rollout.get("cause") or {}
    print(f"\nrollout {rid}: {cause.get('image', '')} changed "
          f"{(cause.get('old') or '')[:19]}… → {(cause.get('new') or '')[:19]}…", flush=True)
    seen, started = {}, time.time()
    while time.time() < deadline:
        detail = get(args.api, f"/api/v1/rollouts/{rid}", args.token)
        r = detail["rollout"]
        for wave_no, wave in enumerate(detail["waves"], 1):
            for img in wave:
                state = img.get("state")
                if seen.get(img["image"]) != state:
                    seen[img["image"]] = state
                    extra = f"  {img['built_digest'][:19]}…" if img.get("built_digest") else ""
                    extra += f"  {img['run_url']}" if img.get("run_url") and state == "built" else ""
                    print(f"  {time.time() - started:5.1f}s  wave {wave_no}  {state:<10} {img['image']}{extra}", flush=True)
        if r.get("state") not in ("running", "pending"):
            print(f"rollout {rid} {r.get('state')} in {time.time() - started:.1f}s", flush=True)
            return 0 if r.get("state") == "succeeded" else 1
        time.sleep(0.5)
    log(f"rollout {rid} still running after {args.timeout}s")
    return 2


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("seed", "bump"):
        s = sub.add_parser(name)
        s.add_argument("--registry", required=True, help="host:port of the registry")
    s = sub.add_parser("serve")
    s.add_argument("--listen", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--public-url", help="URL lineaged's dashboard links runs to")
    s.add_argument("--secret", default="", help="Standard Webhooks key (whsec_…); from DEMO_CI_SECRET by default")
    s.add_argument("--build-seconds", type=float, default=1.5, help="how long a 'build' takes")
    s = sub.add_parser("follow")
    s.add_argument("--api", default="http://127.0.0.1:8080")
    s.add_argument("--token", default="")
    s.add_argument("--after", type=int, default=0, help="follow the first rollout with a greater id")
    s.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    if args.cmd == "serve" and not args.secret:
        import os
        args.secret = os.environ.get("DEMO_CI_SECRET", "")
    rc = {"seed": cmd_seed, "bump": cmd_bump, "serve": cmd_serve, "follow": cmd_follow}[args.cmd](args)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
