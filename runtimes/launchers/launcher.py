"""Python launcher of the action proxy (protocol in runtimes/proxy/src/lib.rs): loads the
action once, then answers one JSON line on fd 3 per request line on stdin."""
import json
import os
import sys
import traceback

action_dir = os.environ.get("OW_ACTION_DIR", "/action")
source_file = os.environ.get("OW_SOURCE_FILE", "__main__.py")
main_name = os.environ.get("OW_MAIN", "main")
binary = os.environ.get("OW_BINARY") == "true"

out = os.fdopen(3, "w", encoding="utf-8")


def reply(obj):
    sys.stdout.flush()
    sys.stderr.flush()
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


def load():
    # A zip carries __main__.py at its root; its folder goes on sys.path for its own modules.
    path = os.path.join(action_dir, "__main__.py" if binary else source_file)
    sys.path.insert(0, action_dir)
    scope = {"__name__": "__main__", "__file__": path}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), scope)
    fn = scope.get(main_name)
    if not callable(fn):
        raise Exception("Action entrypoint '%s' is not a function." % main_name)
    return fn


try:
    main = load()
except Exception as e:  # noqa: BLE001 - any failure to load is the action's
    traceback.print_exc()
    reply({"error": "Initialization has failed due to: %s" % e})
    sys.exit(0)
reply({"ok": True})

for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    for k, v in msg.items():
        if k not in ("value", "id"):
            os.environ["__OW_" + k.upper()] = "" if v is None else v if isinstance(v, str) else json.dumps(v)
    try:
        result = main(msg.get("value"))
        reply({"id": msg.get("id"), "result": result})
    except Exception as e:  # noqa: BLE001 - an exception is the action's developer error
        traceback.print_exc()
        reply({"id": msg.get("id"), "exception": str(e)})
