"""Pin an image digest in the GitOps manifests (`make bump-image`, .github/workflows/deploy.yml).

    python scripts/bump_image.py --image ghcr.io/ray-app/ray-app:2.60.0 --digest sha256:<64 hex>

Two forms are rewritten in place, line by line, so comments and layout stay as they are:
- an image reference `repository:tag` or `repository:tag@sha256:...` anywhere in a YAML file
  (a manifest named on the command line, an Argo CD or kustomize image list) becomes
  `repository:tag@<digest>`; the same repository with another tag (`...:2.60.0-gpu`) is left
  alone;
- a Helm values block with `repository: <repository>` and `tag: <tag>` gets `digest: <digest>`
  (charts/*/values*.yaml: `image.digest`).

Exits 1 when no file holds the image, so that a moved manifest fails the workflow loudly.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What Argo CD syncs: the chart's values (cluster/argocd/ names the chart and a values file).
DEFAULT_GLOBS = ("charts/*/values*.yaml", "cluster/argocd/*.yaml")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]+):\s*(?P<value>[^#]*?)\s*(?P<comment>#.*)?$")


def split_image(image: str) -> tuple[str, str]:
    """`registry/name:tag` -> (`registry/name`, `tag`); refuses a reference without a tag."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not repository:
        raise SystemExit(f"--image must be repository:tag, got {image!r}")
    return repository, tag


def bump_references(text: str, repository: str, tag: str, digest: str) -> str:
    """repository:tag[@sha256:...] -> repository:tag@digest (not repository:tag-other)."""
    pattern = re.compile(
        rf"(?<![\w./-]){re.escape(repository)}:{re.escape(tag)}(?:@sha256:[0-9a-f]{{64}})?(?![\w.-])"
    )
    return pattern.sub(f"{repository}:{tag}@{digest}", text)


def _value(raw: str) -> str:
    return raw.strip().strip("\"'")


def bump_helm_values(text: str, repository: str, tag: str, digest: str) -> str:
    """`digest:` of every block whose siblings say repository: <repository> and tag: <tag>."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = KEY.match(line.rstrip("\n"))
        if not match or match["key"] != "repository" or _value(match["value"]) != repository:
            continue
        indent = match["indent"]
        siblings: dict[str, int] = {}
        for step in (-1, 1):
            j = i + step
            while 0 <= j < len(lines):
                stripped = lines[j].strip()
                if stripped and not stripped.startswith("#"):
                    found = KEY.match(lines[j].rstrip("\n"))
                    current = len(lines[j]) - len(lines[j].lstrip())
                    if current < len(indent):
                        break
                    if found and found["indent"] == indent:
                        siblings.setdefault(found["key"], j)
                j += step
        if "digest" not in siblings or "tag" not in siblings:
            continue
        tag_line = KEY.match(lines[siblings["tag"]].rstrip("\n"))
        if tag_line is None or _value(tag_line["value"]) != tag:
            continue
        old = lines[siblings["digest"]]
        comment = KEY.match(old.rstrip("\n"))
        suffix = f"  {comment['comment']}" if comment and comment["comment"] else ""
        lines[siblings["digest"]] = f'{indent}digest: "{digest}"{suffix}\n'
    return "".join(lines)


def bump_file(path: Path, image: str, digest: str) -> bool:
    """Rewrite one file; True when it changed."""
    repository, tag = split_image(image)
    text = path.read_text()
    new = bump_helm_values(bump_references(text, repository, tag, digest), repository, tag, digest)
    if new != text:
        path.write_text(new)
    return new != text or f"{repository}:{tag}@{digest}" in text or f'"{digest}"' in text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="repository:tag, as the manifests name it")
    parser.add_argument("--digest", required=True, help="sha256:<64 hex digits>, from the push")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    parser.add_argument("files", nargs="*", type=Path, help=f"default: {', '.join(DEFAULT_GLOBS)}")
    args = parser.parse_args(argv)
    if not DIGEST.match(args.digest):
        print(f"--digest must be sha256:<64 hex digits>, got {args.digest!r}", file=sys.stderr)
        return 2
    files = args.files or sorted({p for g in DEFAULT_GLOBS for p in args.root.glob(g)})
    touched = [p for p in files if bump_file(p, args.image, args.digest)]
    for path in touched:
        print(f"{path}: {args.image}@{args.digest}")
    if not touched:
        print(f"no manifest names {args.image} in {len(files)} file(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
