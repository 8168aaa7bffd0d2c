"""Every module's EXAMPLES run on the lab, and what they return is documented.

A module whose examples cannot run as written starts its EXAMPLES with a line
`# not runnable in the lab: <reason>`; the reason is printed, never hidden.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_playbook

MODULE_DIR = REPO / "plugins" / "modules"
STANDARD_KEYS = {"changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations",
                 "skipped", "skip_reason", "false_condition", "exception"}


def module_docs(path: Path) -> dict:
    docs = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                    docs[target.id] = node.value.value
    return docs


MODULES = sorted(p.stem for p in MODULE_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_examples_run_and_return_documented_keys(module, tmp_path):
    docs = module_docs(MODULE_DIR / f"{module}.py")
    examples = docs["EXAMPLES"]
    first = examples.strip().splitlines()[0]
    if first.startswith("# not runnable in the lab:"):
        pytest.skip(first[2:])
    tasks = yaml.safe_load(examples)
    assert tasks, f"{module} has no EXAMPLES"
    # Examples may register results of their own for later examples to use.
    registered = [task.setdefault("register", f"example_{index}") for index, task in enumerate(tasks)]
    results = tmp_path / "results.json"
    tasks.append({
        "name": "Collect the example results",
        "ansible.builtin.copy": {
            "content": "{{ [" + ", ".join(registered) + "] | to_json }}",
            "dest": str(results), "mode": "0600"},
        "delegate_to": "localhost",
    })
    playbook = tmp_path / "examples.yml"
    playbook.write_text(yaml.safe_dump([{"name": f"EXAMPLES of {module}", "hosts": "lab[0]",
                                         "gather_facts": False, "tasks": tasks}], sort_keys=False))
    proc = run_playbook(playbook)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-20000:]

    documented = yaml.safe_load(docs["RETURN"]) or {}
    always = {k for k, v in documented.items() if v.get("returned") == "always"}
    fqcn = f"virtnode.kvm.{module}"
    for task, result in zip(tasks, json.loads(results.read_text())):
        if fqcn not in task or result.get("skipped") or result.get("failed"):
            continue
        keys = {k for k in result if not k.startswith("_ansible")} - STANDARD_KEYS
        assert keys <= set(documented), f"{module} returns undocumented keys: {sorted(keys - set(documented))}"
        assert always <= keys, f"{module} misses keys documented as always returned: {sorted(always - keys)}"
