"""The model card (README.md) that push writes: YAML front matter the Hub indexes, and a body
generated from the manifests (files, roles and blocks, how to load each file where).

Updating a card keeps what a person wrote: only the text between the adapterctl markers is
ours, and only our front-matter keys change (tags are unioned; a license the card already has
stays unless --license is given). Everything taken from a file (titles, prompts, names) is
escaped for Markdown, so that no file can close a table, a code block or our marker.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from adapterctl.errors import UsageError
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter

BEGIN = "<!-- adapterctl:begin -->"
END = "<!-- adapterctl:end -->"
# The base model each architecture's adapters are trained on, and that base's license (derivatives
# of SDXL fall under its CreativeML Open RAIL++-M terms). None: a test model with no Hub repository.
BASES = {"sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "openrail++"), "sdxl-tiny": (None, None)}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_TOOLS = ("comfyui", "a1111", "forge", "diffusers")  # the consumers a card names, as profiled
_TAG = re.compile(r"[^a-z0-9+.-]+")


@dataclass(frozen=True)
class CardFile:
    """One file of the upload as the card describes it."""

    name: str  # path in the repository
    adapter: "Adapter"
    sha256: str
    size: int
    source: Optional[str] = None  # the uploaded file it was derived from (None: it is one of the inputs)
    derived: Optional[str] = None  # how: "role style", "kohya layout"


# -- front matter ------------------------------------------------------------------------------
def metadata(files: list[CardFile], *, license: Optional[str]) -> dict:
    """Our keys. ``license`` None: the base model's (if any); "none": leave it out."""
    originals = [f for f in files if f.source is None] or files
    arch = originals[0].adapter.arch.name
    base = _base_model(originals)
    tags = ["lora", "text-to-image", "diffusers", "adapterctl"]
    if arch == "sdxl":
        tags += ["stable-diffusion-xl", "stable-diffusion-xl-diffusers"]
    elif BASES.get(arch, (1,))[0] is None:
        tags += ["adapterctl-test-model"]
    for f in originals:
        tags.append(_tag(f.adapter.method))
    roles = sorted({r for f in files for r in f.adapter.roles() if r != "untagged"})
    tags += [f"{r}-lora" for r in roles]
    meta: dict = {}
    if base:
        meta["base_model"] = base[0] if len(base) == 1 else base
    meta["library_name"] = "diffusers"
    chosen = license if license is not None else BASES.get(arch, (None, None))[1]
    if chosen and chosen != "none":
        meta["license"] = chosen
    meta["tags"] = list(dict.fromkeys(t for t in tags if t))
    prompt = _instance_prompt(originals)
    if prompt:
        meta["instance_prompt"] = prompt
    return meta


def _base_model(files: list[CardFile]) -> list[str]:
    out = []
    for f in files:
        trained = _train_args(f.adapter).get("base")
        if isinstance(trained, str) and _REPO_ID.match(trained):
            out.append(trained)  # "tiny" and local paths are not Hub repositories
        elif not isinstance(trained, str) or trained == "":
            default = BASES.get(f.adapter.arch.name, (None, None))[0]
            if default:
                out.append(default)
    return list(dict.fromkeys(out))


def _train_args(adapter: "Adapter") -> dict:
    for op in reversed(adapter.manifest.provenance.operations):
        if op.op == "train":
            return dict(op.args)
    return {}


def _instance_prompt(files: list[CardFile]) -> Optional[str]:
    for f in files:
        phrase = f.adapter.metadata.get("modelspec.trigger_phrase") or _train_args(f.adapter).get("prompt")
        if isinstance(phrase, str) and phrase.strip():
            return clip(phrase.strip(), 200)
    return None


def _tag(text: str) -> str:
    return _TAG.sub("-", text.lower()).strip("-")[:60]


# -- body ----------------------------------------------------------------------------------------
def section(repo_id: str, files: list[CardFile]) -> str:
    """Our part of the README, markers included."""
    originals = [f for f in files if f.source is None] or files
    loads = {f.name: _loads_in(f.adapter) for f in files}
    first = originals[0].adapter
    title = first.metadata.get("modelspec.title") or repo_id.split("/")[-1]
    arch = first.arch.name
    lines = [BEGIN, f"# {_md(title)}", ""]
    kinds = ", ".join(dict.fromkeys(f"{_md(f.adapter.method)}" for f in originals))
    base = BASES.get(arch, (None, None))[0]
    lines.append(f"LoRA adapter{'s' if len(originals) > 1 else ''} ({kinds}) for `{_md(arch)}`"
                 + (f", base model [{base}](https://huggingface.co/{base})." if base else
                    ": adapterctl's tiny SDXL-shaped **test model** (random weights, images are noise; "
                    "`--base tiny`)."))
    lines += ["", "Written by `adapterctl push`: every file carries a typed manifest "
              "(roles, blocks, rank, scale, provenance) in its safetensors header.", "", "## Files", "",
              "| file | layout | roles | modules | size | sha256 | loads completely in |",
              "|---|---|---|---|---|---|---|"]
    for f in files:
        roles = ", ".join(f"{_md(r)} {n}" for r, n in sorted(f.adapter.roles().items()))
        note = f" ({_md(f.derived)} of `{_md(f.source)}`)" if f.source else ""
        lines.append(f"| `{_md(f.name)}`{note} | {_md(f.adapter.layout)} | {roles} | {len(f.adapter.modules)} | "
                     f"{f.size / 1e6:.1f} MB | `{f.sha256[:16]}…` | {', '.join(loads[f.name]) or '-'} |")
    for f in originals:
        lines += ["", f"## Roles and blocks of `{_md(f.name)}`", "", *_blocks_table(f.adapter)]
        lbw = _lbw_lines(f)
        if lbw:
            lines += ["", *lbw]
    lines += ["", "## Use", "", *_usage(repo_id, files, loads), END]
    return "\n".join(lines) + "\n"


def _blocks_table(adapter: "Adapter") -> list[str]:
    from adapterctl.report import inspect_report

    rows = ["| block | LBW | role | modules | rank |", "|---|---|---|---|---|"]
    for b in inspect_report(adapter)["blocks"]:
        ranks = ", ".join(str(r) for r in b["rank"])
        rows.append(f"| `{_md(b['block'] or '?')}` | {_md(b['lbw'] or '-')} | {_md(', '.join(b['roles']))} | "
                    f"{b['modules']} | {ranks} |")
    return rows


def _lbw_lines(f: CardFile) -> list[str]:
    """Per role, the A1111 LoRA Block Weight vector that keeps only that role's blocks: usable
    when no LBW label holds two roles and every module has a label."""
    from adapterctl.arch import lbw_list

    adapter = f.adapter
    by_role: dict[str, set] = {}
    for e in adapter.manifest.modules:
        by_role.setdefault(e.role or "untagged", set()).add(adapter.arch.get(e.module).lbw)
    if len(by_role) < 2 or any(None in labels for labels in by_role.values()):
        return []
    labels = [lbl for group in by_role.values() for lbl in group]
    if len(labels) != len(set(labels)):
        return ["Two roles share an LBW block here, so block weights cannot separate them: use per-role files "
                "(`adapterctl push --split-roles`, or `adapterctl pull --role ROLE`)."]
    for n in (12, 20):
        try:
            names = lbw_list(n, adapter.arch.name)
        except UsageError:
            continue
        if set(labels) <= set(names):
            out = ["LoRA Block Weight (A1111/Forge extension) vectors that keep one role of the combined file:", ""]
            for role, group in sorted(by_role.items()):
                vector = ",".join("1" if name in group else "0" for name in names)
                out.append(f"- {_md(role)}: `lbw={vector}`")
            return out
    return []


def _loads_in(adapter: "Adapter") -> list[str]:
    from adapterctl.consumers.profile import load_profiles
    from adapterctl.consumers.verdict import judge

    profiles = load_profiles()
    return [name for name in _TOOLS if name in profiles and judge(adapter, profiles[name]).ok]


def _usage(repo_id: str, files: list[CardFile], loads: dict[str, list[str]]) -> list[str]:
    arch = files[0].adapter.arch.name
    tiny = " --base tiny" if BASES.get(arch, (1,))[0] is None else ""
    repo = shlex.quote(repo_id)
    per_role: dict[str, CardFile] = {}
    for f in sorted(files, key=lambda f: (len(f.name), f.name), reverse=True):  # the plainest name wins
        roles_here = list(f.adapter.roles())
        if len(roles_here) == 1 and roles_here[0] != "untagged":
            per_role[roles_here[0]] = f
    roles = sorted({r for f in files for r in f.adapter.roles() if r != "untagged"})
    lines = ["### adapterctl", "", "```console",
             f"adapterctl pull {repo} -o adapters/          # every file, sha256-verified, recorded in "
             "adapters/.adapterctl-origins.json"]
    for role in roles:
        lines.append(f"adapterctl pull {repo} --role {role} -o adapters/")
    originals = [f for f in files if f.source is None] or files
    holder = {r: next((f for f in originals if r in f.adapter.roles()), None) for r in roles}
    spec = " ".join(f"--adapter {shlex.quote('adapters/' + f.name + ':' + r)}" for r, f in holder.items() if f) or \
        f"--adapter {shlex.quote('adapters/' + originals[0].name)}"
    prompt = _instance_prompt(files) or "a photo"
    lines += [f"adapterctl generate {shlex.quote(prompt)}{tiny} {spec}", "```", ""]
    diffusers_files = [f for f in files if "diffusers" in loads[f.name]]
    if tiny == "":
        pick = [per_role[r] for r in roles if r in per_role and per_role[r] in diffusers_files] or diffusers_files[:1]
        lines += ["### diffusers", "", "```python", "import torch", "from diffusers import StableDiffusionXLPipeline",
                  "", f"pipe = StableDiffusionXLPipeline.from_pretrained({BASES[arch][0]!r}, "
                      "torch_dtype=torch.float16).to(\"cuda\")"]
        for f in pick or files[:1]:
            named = [r for r, g in per_role.items() if g is f]
            slot = f", adapter_name={named[0]!r}" if named else ""
            lines.append(f"pipe.load_lora_weights({repo_id!r}, weight_name={f.name!r}{slot})")
        lines += [f"image = pipe({prompt!r}).images[0]", "```", ""]
        if roles and per_role:
            lines += ["For one role (only the style, only the content) load that role's own file: diffusers "
                      "applies every branch of a file it loads.", ""]
        elif roles:
            lines += ["diffusers applies every branch of a file: to use one role alone, push with "
                      "`--split-roles` or run `adapterctl pull --role ROLE`.", ""]
    kohya = [f for f in files if "comfyui" in loads[f.name]]
    lines += ["### ComfyUI, A1111, Forge", ""]
    if kohya:
        names = ", ".join(f"`{_md(f.name)}`" for f in kohya)
        stem = kohya[0].name.rsplit("/", 1)[-1].removesuffix(".safetensors")
        lines += [f"Download {names} (kohya layout) into `ComfyUI/models/loras/` (LoraLoader) or "
                  f"`stable-diffusion-webui/models/Lora/` and prompt with `<lora:{_md(stem)}:1>`. The LBW labels "
                  "in the tables above are the blocks of the LoRA Block Weight extension."]
    else:
        lines += ["No file here is in the kohya layout these tools load completely: push with `--also kohya`, "
                  "or run `adapterctl convert FILE --for comfyui` after pulling."]
    return lines


def _md(text) -> str:
    """File-derived text, safe inside a Markdown table cell or inline code: escaped controls,
    no pipe, no backtick, no angle bracket (which could forge our markers or HTML)."""
    text = clip(str(text), 200)
    return text.replace("|", "\\|").replace("`", "'").replace("<", "&lt;").replace(">", "&gt;")


# -- merging with an existing README -----------------------------------------------------------
def render(repo_id: str, files: list[CardFile], *, license: Optional[str], existing: Optional[str] = None) -> str:
    """The README.md to upload: a new card, or ``existing`` with our section and keys updated."""
    import yaml

    front, body = split_front_matter(existing or "")
    ours = metadata(files, license=license)
    merged = dict(front)
    for key, value in ours.items():
        if key == "tags":
            old = merged.get("tags")
            old = [old] if isinstance(old, str) else [t for t in (old or []) if isinstance(t, str)]
            merged["tags"] = list(dict.fromkeys(old + value))
        elif key == "license" and license is None and "license" in front:
            continue  # the card's own license stays unless --license is given
        else:
            merged[key] = value
    text = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=1000)
    block = section(repo_id, files)
    if BEGIN in body or END in body:
        start, stop = body.find(BEGIN), body.find(END)
        if body.count(BEGIN) != 1 or body.count(END) != 1 or stop < start:
            raise UsageError("the repository's README.md has unbalanced adapterctl markers",
                             hint=f"keep exactly one '{BEGIN}' before one '{END}', or remove both")
        body = body[:start] + block.rstrip("\n") + body[stop + len(END):]
    elif body.strip():
        body = body.rstrip("\n") + "\n\n" + block
    else:
        body = block
    return f"---\n{text}---\n\n{body.lstrip(chr(10))}"


def split_front_matter(text: str) -> tuple[dict, str]:
    """(front matter as a dict, the rest). A card whose front matter is not a YAML mapping is
    refused rather than rewritten: merging must never lose what a person wrote."""
    import yaml

    text = text.replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0 or text[end + 4:end + 5] not in ("", "\n"):
        return {}, text
    try:
        data = yaml.safe_load(text[4:end]) if text[4:end].strip() else {}
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        raise UsageError("the repository's README.md front matter is not a YAML mapping; refusing to rewrite it",
                         hint="fix or remove the block between the '---' lines, then push again")
    return data, text[end + 4:].lstrip("\n")
