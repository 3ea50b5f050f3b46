#!/usr/bin/python3
"""conf/subpoold.conf must list every key subpoold knows, with its real default,
and nothing else. Usage: check_conf.py SUBPOOLD CONF"""
import re
import subprocess
import sys

subpoold, conf = sys.argv[1], sys.argv[2]
out = subprocess.run([subpoold, "--help-config"], check=True, capture_output=True,
                     text=True).stdout
known = dict(re.findall(r"^  (\w+)\s+default (\S+)", out, re.M))
documented = dict(re.findall(r"^#(\w+) = (\S+)\s*$", open(conf).read(), re.M))
bad = []
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
