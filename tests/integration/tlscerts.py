"""Certificates for the TLS tests, made at run time with the openssl CLI (Debian 12's 3.0).

Everything is written under the test's own directory: a CA, then server certificates it
signs for chosen names, optionally already expired. Nothing here touches the network.
"""

import subprocess
from pathlib import Path


def _openssl(*args, cwd: Path):
    proc = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, f"openssl {' '.join(map(str, args))} failed:\n{proc.stderr}"


class Ca:
    """A throwaway certificate authority in `directory`."""

    def __init__(self, directory: Path, name: str = "ca"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert = self.dir / f"{name}.pem"
        self.key = self.dir / f"{name}.key"
        self._serial = 1
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.key, "-out", self.cert, "-days", "30",
                 "-subj", f"/CN=subpool test {name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, name: str, sans, days: int = 30):
        """A server certificate and key for `sans` (e.g. ["DNS:localhost", "IP:127.0.0.1"]).

        days=-1 gives one whose notAfter is already in the past (expired)."""
        self._serial += 1
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-set_serial", self._serial, "-days", days, "-extfile", ext, "-out", cert,
                 cwd=self.dir)
        return cert, key


LOCAL_SANS = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
