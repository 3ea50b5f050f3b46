#!/usr/bin/python3
"""conf/subpoold.conf must list every key subpoold knows, with its real default
and whether a reload changes it ("# Reload: live|restart" right above the key),
and nothing else; so must the subpoold.conf(5) man page when given.
Usage: check_conf.py SUBPOOLD CONF [MAN.scd]"""
import re
import subprocess
import sys

subpoold, conf = sys.argv[1], sys.argv[2]
out = subprocess.run([subpoold, "--help-config"], check=True, capture_output=True,
                     text=True).stdout
known = dict(re.findall(r"^  (\w+)\s+default (\S+)", out, re.M))
reload = dict(re.findall(r"^  (\w+)\s+default .*\n\s+.*\(reload: (live|restart)\)$", out, re.M))
text = open(conf).read()
documented = dict(re.findall(r"^#(\w+) = (\S+)\s*$", text, re.M))
doc_reload = {k: v for v, k in re.findall(r"^# Reload: (live|restart)\b.*\n#(\w+) = ", text, re.M)}
bad = []
for key in known:
    if key not in reload:
        bad.append(f"subpoold --help-config: {key} has no reload: column")
    elif key in documented and doc_reload.get(key) != reload[key]:
        bad.append(f"{conf}: {key} says reload {doc_reload.get(key)}, the code says {reload[key]}")
if len(sys.argv) > 3:
    man = sys.argv[3]
    entries = re.findall(r"^\*(\w+)\* = (\S+) \(.*reload: (live|restart)\)", open(man).read(), re.M)
    in_man = {k: (d, r) for k, d, r in entries}
    for key, default in known.items():
        if key not in in_man:
            bad.append(f"{man}: key {key} is missing")
        elif in_man[key] != (default, reload.get(key)):
            bad.append(f"{man}: {key} shows {in_man[key]}, the code has {(default, reload.get(key))}")
    for key in in_man.keys() - known.keys():
        bad.append(f"{man}: {key} is not a subpoold key")
for key, default in known.items():
    if key not in documented:
        bad.append(f"{conf}: key {key} is missing")
    elif documented[key] != default:
        bad.append(f"{conf}: {key} shows {documented[key]}, the default is {default}")
for key in documented.keys() - known.keys():
    bad.append(f"{conf}: {key} is not a subpoold key")
if not known:
    bad.append("subpoold --help-config listed no keys")
print("\n".join(bad) or f"{len(known)} keys documented with their defaults")
sys.exit(1 if bad else 0)
