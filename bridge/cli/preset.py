"""`refmaster preset list|show|diff|rename|delete|import|export`: the preset store from the shell.

Every subcommand takes ``--presets DIR`` (else ``$REFMASTER_PRESETS``, else the user data folder;
see :mod:`presets.store`). Damaged or foreign files in the folder are reported on stderr, one
line each, and never hide the others.
"""

from __future__ import annotations

import json
import sys

from bridge.cli.options import add_presets_option
from engine import params as P


def open_store(args):
    from presets import PresetStore

    return PresetStore(getattr(args, "presets", None))


def _report_problems(problems) -> None:
    for prob in problems:
        print(f"warning: skipped {prob}", file=sys.stderr)


def _when(iso) -> str:
    return (iso or "-").replace("T", " ")[:19]


def cmd_list(args) -> int:
    from presets import short_fingerprint

    store = open_store(args)
    presets, problems = store.scan()
    _report_problems(problems)
    if args.json:
        print(json.dumps([{"name": p.name, "factory": p.factory, "path": str(p.path), "reference": p.reference,
                           "fingerprint": p.fingerprint, "modified": p.modified,
                           "model_version": p.model_version} for p in presets], indent=2))
        return 0
    print(f"presets in {store.directory}" + (" (+ factory)" if store.factory_dir else ""))
    if not presets:
        print("  (none)")
        return 0
    rows = [("name", "reference", "key", "modified", "")]
    rows += [(p.name, p.reference or "-", short_fingerprint(p.fingerprint), _when(p.modified),
              "factory" if p.factory else "") for p in presets]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
    return 0


def cmd_show(args) -> int:
    from presets import short_fingerprint

    store = open_store(args)
    pr = store.get(args.name)
    if args.json:
        print(pr.to_json(), end="")
        return 0
    print(f"preset     {pr.name}{'  (factory, read-only)' if pr.factory else ''}")
    print(f"file       {pr.path}")
    print(f"reference  {pr.reference or '-'}  key {short_fingerprint(pr.fingerprint)}")
    print(f"model      {pr.model_version or '-'}   z_ref {('%d values' % len(pr.z_ref)) if pr.z_ref else 'none'}")
    hist = pr.ito["loss_history"]
    ito = ", ".join(f"{k}={v}" for k, v in pr.ito["settings"].items()) or "-"
    print(f"ITO        {ito}" + (f"; {len(hist)} steps, loss {hist[0]:.4g} -> {min(hist):.4g}" if hist else ""))
    print(f"created    {_when(pr.created)}   modified {_when(pr.modified)}")
    if pr.notes:
        print(f"notes      {pr.notes}")
    print()
    print(P.params_table(pr.chain.values, pr.chain.switches, show_range=False))
    return 0


def cmd_diff(args) -> int:
    from presets import diff_presets

    store = open_store(args)
    a, b = store.get(args.a), store.get(args.b)
    rows = [tuple(c if len(c) <= 40 else c[:39] + "…" for c in r) for r in diff_presets(a, b)]
    if not rows:
        print(f"'{a.name}' and '{b.name}' are the same")
        return 0
    head = ("", a.name, b.name, "change")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
    return 0


def cmd_rename(args) -> int:
    path = open_store(args).rename(args.old, args.new)
    print(f"renamed '{args.old}' -> '{args.new}' ({path})")
    return 0


def cmd_delete(args) -> int:
    path = open_store(args).delete(args.name)
    print(f"deleted '{args.name}' ({path})")
    return 0


def cmd_import(args) -> int:
    store = open_store(args)
    pr = store.import_file(args.file, name=args.name, overwrite=args.force)
    print(f"imported {args.file} as '{pr.name}' ({pr.path})")
    return 0


def cmd_export(args) -> int:
    out = open_store(args).export(args.name, args.output)
    print(f"exported '{args.name}' -> {out}")
    return 0


def cmd_preset(args) -> int:
    return PRESET_COMMANDS[args.preset_command](args)


PRESET_COMMANDS = {"list": cmd_list, "show": cmd_show, "diff": cmd_diff, "rename": cmd_rename,
                   "delete": cmd_delete, "import": cmd_import, "export": cmd_export}


def register(sub) -> dict:
    p = sub.add_parser("preset", help="list, show, compare, rename, delete, import and export presets")
    psub = p.add_subparsers(dest="preset_command", metavar="ACTION")
    psub.required = True
    q = psub.add_parser("list", help="every preset (user and factory) and any damaged file")
    q.add_argument("--json", action="store_true")
    add_presets_option(q)
    q = psub.add_parser("show", help="a preset's parameters in real units and its metadata")
    q.add_argument("name")
    q.add_argument("--json", action="store_true", help="print the preset file's JSON")
    add_presets_option(q)
    q = psub.add_parser("diff", help="what differs between two presets")
    q.add_argument("a")
    q.add_argument("b")
    add_presets_option(q)
    q = psub.add_parser("rename", help="rename a preset (and its file)")
    q.add_argument("old")
    q.add_argument("new")
    add_presets_option(q)
    q = psub.add_parser("delete", help="delete a user preset")
    q.add_argument("name")
    add_presets_option(q)
    q = psub.add_parser("import", help="copy a preset file (or a chain parameter file) into the store")
    q.add_argument("file")
    q.add_argument("--name", help="store it under this name (default: the name in the file)")
    q.add_argument("--force", action="store_true", help="replace a preset of the same name")
    add_presets_option(q)
    q = psub.add_parser("export", help="write a preset to a file")
    q.add_argument("name")
    q.add_argument("output", metavar="FILE_OR_DIR")
    add_presets_option(q)
    return {"preset": cmd_preset}
