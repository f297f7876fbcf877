"""`refmaster osc addresses|dialect|layout`: the OSC address space, DAW maps and controller layouts."""

from __future__ import annotations

import json

from engine.errors import RefmasterError


def cmd_addresses(args) -> int:
    from bridge.osc import space as A

    rows = A.address_rows()
    if args.json:
        print(json.dumps([{"address": a, "args": t, "meaning": m} for a, t, m in rows], indent=2))
        return 0
    w = max(len(r[0]) for r in rows)
    for a, t, m in rows:
        print(f"{a.ljust(w)}  {t.ljust(9)}  {m}")
    print(f"\n{len(rows)} addresses. Replies: {A.ERROR}, {A.WARNING}, {A.OK}; see docs/bridge.md.")
    return 0


def cmd_dialect(args) -> int:
    from bridge.osc.dialects import Dialect, builtin_dialects, parse_vars

    if not args.dialect:
        for name in builtin_dialects():
            d = Dialect.load(name)
            print(f"{name}: {d.description}")
        return 0
    d = Dialect.load(args.dialect, parse_vars(args.var))
    if args.json:
        print(json.dumps([{"key": k, "address": a, "scale": s} for k, a, s in d.rows()], indent=2))
        return 0
    print(f"dialect {d.name} ({d.source})\n{d.description}\n")
    rows = d.rows()
    w = max(len(r[0]) for r in rows)
    for k, a, s in rows:
        print(f"  {k.ljust(w)}  {a}  ({s})")
    return 0


def cmd_layout(args) -> int:
    from bridge.osc.dialects import open_stage_control_layout
    from bridge.osc.subscriptions import SUBSCRIPTION_TTL_S

    if not args.open_stage_control:
        raise RefmasterError("say which layout to write: --open-stage-control FILE")
    from engine.io.atomic import atomic_write_text, check_output

    out = check_output(args.open_stage_control)
    session = open_stage_control_layout(args.host, args.port, args.form)
    atomic_write_text(out, json.dumps(session, indent=1, ensure_ascii=False) + "\n")
    n = sum(len(t["widgets"][1]["widgets"]) for t in session["content"]["tabs"])
    print(f"{out}: Open Stage Control session, {len(session['content']['tabs'])} tabs, {n} faders, "
          f"sending to {args.host}:{args.port}")
    print(f"(to get feedback, have it subscribe: /refmaster/subscribe <its host> <its port> {args.form}; "
          f"renewed by every message it sends from that port, else it lapses after {SUBSCRIPTION_TTL_S / 60:g} minutes)")
    if args.host not in ("127.0.0.1", "localhost"):
        print(f"(a controller on another machine needs: refmaster serve --osc-host {args.host} "
              f"--allow <its address or network>)")
    return 0


def cmd_osc(args) -> int:
    return {"addresses": cmd_addresses, "dialect": cmd_dialect, "layout": cmd_layout}[args.osc_command](args)


def register(sub) -> dict:
    p = sub.add_parser("osc", help="the OSC address space, DAW dialects and controller layouts")
    osub = p.add_subparsers(dest="osc_command", metavar="ACTION")
    osub.required = True
    q = osub.add_parser("addresses", help="every OSC address the server answers")
    q.add_argument("--json", action="store_true")
    q = osub.add_parser("dialect", help="list the DAW dialects, or show/validate one (name or mapping file)")
    q.add_argument("dialect", nargs="?")
    q.add_argument("--var", action="append", metavar="NAME=VALUE", help="set a dialect variable (e.g. track=2)")
    q.add_argument("--json", action="store_true")
    q = osub.add_parser("layout", help="write a controller layout")
    q.add_argument("--open-stage-control", metavar="FILE", help="write an Open Stage Control session (.json)")
    q.add_argument("--host", default="127.0.0.1", help="where refmaster serve listens (default 127.0.0.1)")
    q.add_argument("--port", type=int, default=9000, help="its OSC port (default 9000)")
    q.add_argument("--form", choices=("param", "norm"), default="param",
                   help="faders in real units (param, default) or 0…1 (norm)")
    return {"osc": cmd_osc}
