"""Where a run keeps what each phase recorded: every artifact path, once.

The phases write them and the audit, export, resume and report read them back, so a path
spelled twice is a record that one side stops finding when the other renames it.
"""

from __future__ import annotations

# The job
SPEC_RESOLVED = "spec/resolved.yaml"  # the validated spec, overrides applied, paths resolved
SPEC_AS_WRITTEN = "spec/as_written.json"  # the document as the user wrote it, overrides applied
PLAN = "plan.json"  # what `rrtool plan` showed for the run, with its estimate
ENVIRONMENT = "environment.json"  # the package versions the run used
MODEL_FACTS = "model.json"  # the loaded model: parameters, dtype, device, load time

# Reveal
REVEAL_PROGRESS = "reveal/progress.jsonl"  # every generation so far (resume)
REVEAL_FORGET = "reveal/forget.jsonl"  # the forget examples Release trains on
REVEAL_RETAIN = "reveal/retain.jsonl"  # the self-generated retain examples
REVEAL_SEARCH_STATE = "reveal/search_state.json"  # the instruction search's bandit (resume)
REVEAL_TRIALS = "reveal/trials.jsonl"  # each instruction tried, with its scores

# Release
RELEASE_STATE = "release/state.json"  # the applied stack and the stopping state
RELEASE_MODULES = "release/modules"  # one <name>.safetensors (+ .json) per trained module
RELEASE_STEPS = "release/steps.jsonl"  # each step: weight, scores, rule, reverted
RELEASE_CANDIDATES = "release/candidates.jsonl"  # every weight candidate evaluated
RELEASE_SIMILARITY = "release/similarity.jsonl"  # forget/retain subspace similarity
RELEASE_CMD = "release/cmd.jsonl"  # CMD's clauses, scores, rewrites and continuations

# Audit
AUDIT_BEFORE = "audit/before.json"
AUDIT_AFTER = "audit/after.json"
AUDIT_SUMMARY = "audit/summary.json"
AUDIT_PROBES = "audit/probes.json"
AUDIT_MEMBERSHIP_BASE = "audit/membership_base.json"
AUDIT_LEAKAGE = "audit/leakage.json"  # audit prompts that hold Reveal / search contexts
AUDIT_GRID_BEFORE = "audit/grid_before.json"  # every set x phrasing cell, base model
AUDIT_GRID_AFTER = "audit/grid_after.json"  # the same cells, released model
AUDIT_GRID = "audit/grid.json"  # the grid's rows and its worst held-out cell
AUDIT_ANSWERS_TABLE = "audit/answers_table.json"  # before/after answers, an MLflow table
