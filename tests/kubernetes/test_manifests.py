"""Schema checks of deploy/kubernetes against the Kubernetes 1.30 OpenAPI schemas that the
kubernetes-validate package ships, in strict mode (unknown fields are errors).

Run: python3 -m unittest discover -s tests/kubernetes
"""

import copy
import pathlib
import unittest

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"
MANIFEST_DIR = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def load_resources(path):
    with open(path, encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def validate(resource):
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def manifest_paths():
    return sorted(p for p in MANIFEST_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def find(kind, name):
    for path in manifest_paths():
        for resource in load_resources(path):
            if resource["kind"] == kind and resource["metadata"]["name"] == name:
                return copy.deepcopy(resource)
    raise LookupError(f"no {kind} {name} in {MANIFEST_DIR}")


class ManifestTest(unittest.TestCase):
    def test_every_resource_is_valid(self):
        paths = manifest_paths()
        self.assertGreaterEqual(len(paths), 5)
        for path in paths:
            for resource in load_resources(path):
                with self.subTest(file=path.name, kind=resource.get("kind")):
                    validate(resource)

    def test_kustomization_lists_every_manifest(self):
        kustomization = load_resources(MANIFEST_DIR / "kustomization.yaml")[0]
        listed = sorted(kustomization["resources"])
        self.assertEqual(listed, [p.name for p in manifest_paths()])

    def test_unknown_field_is_rejected(self):
        deployment = find("Deployment", "tunefleet-coordinator")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container["imagePullPolicyy"] = "Always"
        with self.assertRaises(kubernetes_validate.ValidationError):
            validate(deployment)

    def test_wrong_type_is_rejected(self):
        statefulset = find("StatefulSet", "etcd")
        statefulset["spec"]["replicas"] = "three"
        with self.assertRaises(kubernetes_validate.ValidationError):
            validate(statefulset)

    def test_missing_required_field_is_rejected(self):
        daemonset = find("DaemonSet", "tunefleet-worker")
        del daemonset["spec"]["selector"]
        with self.assertRaises(kubernetes_validate.ValidationError):
            validate(daemonset)

    def test_coordinator_probes_use_http_endpoints(self):
        deployment = find("Deployment", "tunefleet-coordinator")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        self.assertEqual(readiness, {"path": "/readyz", "port": "metrics"})
        self.assertEqual(liveness, {"path": "/healthz", "port": "metrics"})
        ports = {port["name"] for port in container["ports"]}
        self.assertIn("metrics", ports)
        self.assertGreaterEqual(deployment["spec"]["replicas"], 2)

    def test_worker_requests_gpus(self):
        daemonset = find("DaemonSet", "tunefleet-worker")
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("nvidia.com/gpu", container["resources"]["limits"])


if __name__ == "__main__":
    unittest.main()
