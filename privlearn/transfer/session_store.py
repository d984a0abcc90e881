"""The resumable state of an encrypted training session: one folder, each role's part apart.

``server/`` holds what a server may hold and nothing else: the public bundle, the uploaded
batches and, after every training message, its encrypted training state (weights, momentum,
the retained epoch snapshots, its position) as a numbered *generation*. ``client/`` holds the
secret key and the client's state (both mode 0600): where training stands, the early-stopping
record, the history, the validation labels and its random generators' states.

The client resumes by naming the generation its own state matches; the server keeps the last
:data:`KEEP` generations, so a crash between the server's write and the client's loses
nothing. A server restarted alone needs only its folder and that number, so a network server
can restart from the same store. Every file is an envelope of :mod:`privlearn.he.io` (checked
before it is parsed) written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from privlearn.he import ClientContext, io

KEEP = 2  # server generations kept: the client's may lag the server's by one
_SERVER_STATE, _CLIENT_STATE = "server_state", "client_state"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or belongs to another session; the message says which."""


def _blob_sections(blobs) -> bytes:
    return io.pack_sections({f"{i:06d}": b for i, b in enumerate(blobs)})


class ServerStore:
    """The server's part: ``folder`` is also its working directory (bundle, uploads)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def _path(self, generation: int) -> Path:
        return self.folder / f"state-{generation:08d}.plhe"

    def write(self, generation: int, backend: str, fingerprint: str, meta: dict, blobs) -> Path:
        data = io.pack(
            _SERVER_STATE,
            backend,
            fingerprint,
            _blob_sections(blobs),
            {**meta, "generation": generation},
        )
        path = io.write_atomic(self._path(generation), data)
        self._path(generation - KEEP).unlink(missing_ok=True)
        return path

    def read(self, generation: int, backend: str, fingerprint: str) -> tuple[dict, list[bytes]]:
        path = self._path(generation)
        try:
            env = io.unpack(
                path.read_bytes(),
                kind=_SERVER_STATE,
                backend=backend,
                params_fingerprint=fingerprint,
            )
        except FileNotFoundError:
            held = sorted(p.name for p in self.folder.glob("state-*.plhe"))
            raise CheckpointError(
                f"{self.folder} holds no server state of generation {generation} (it holds "
                f"{held or 'none'}): the client's checkpoint is not this server's"
            ) from None
        except io.EnvelopeError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if env.meta.get("generation") != generation:
            raise CheckpointError(f"{path} holds generation {env.meta.get('generation')!r}")
        blobs = io.unpack_sections(env.payload)
        return env.meta, [blobs[k] for k in sorted(blobs)]


class ClientStore:
    """The client's part: its key (saved once) and its state (replaced after every message)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.key_path = self.folder / "secret_key.plhe"
        self.state_path = self.folder / "state.plhe"

    def create(self, ctx: ClientContext) -> None:
        self.folder.mkdir(mode=0o700, parents=True)
        ctx.save(self.key_path)

    def write(self, ctx: ClientContext, state: dict) -> None:
        payload = json.dumps({**state, "key": ctx.key_id}).encode()
        blob = io.pack(_CLIENT_STATE, ctx.backend_name, ctx.params.fingerprint(), payload)
        io.write_atomic(self.state_path, blob, private=True)

    def read(self, *, insecure_for_testing: bool = False) -> tuple[ClientContext, dict]:
        for path in (self.key_path, self.state_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path} is missing: the run stopped before its data was uploaded (start "
                    f"it afresh), or {self.folder.parent} is not a checkpoint"
                )
        try:
            ctx = ClientContext.load(self.key_path, insecure_for_testing=insecure_for_testing)
        except io.EnvelopeError as e:
            raise CheckpointError(f"{self.key_path}: {e}") from None
        try:
            env = io.unpack(
                io.read_private(self.state_path),
                kind=_CLIENT_STATE,
                backend=ctx.backend_name,
                params_fingerprint=ctx.params.fingerprint(),
            )
            state = json.loads(env.payload)
        except (io.EnvelopeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.state_path}: {e}") from None
        if not isinstance(state, dict) or state.get("key") != ctx.key_id:
            raise CheckpointError(
                f"{self.state_path} belongs to another key than {self.key_path}: the two were "
                f"not written by one session"
            )
        return ctx, state


class SessionStore:
    """One checkpoint folder: ``server/`` (public material only) and ``client/`` (private)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.server = ServerStore(self.root / "server")
        self.client = ClientStore(self.root / "client")

    @property
    def started(self) -> bool:
        """Whether a run's training began here (its data were uploaded): one to resume."""
        return self.client.state_path.is_file()

    def create(self, ctx: ClientContext) -> None:
        """Start a new checkpoint: ``root`` must be new or empty (one is never overwritten)."""
        if self.client.key_path.is_file() and not self.started:
            raise CheckpointError(
                f"{self.root} holds a run stopped before its data were uploaded: nothing to "
                f"resume; delete the folder and start again"
            )
        if self.root.exists() and any(self.root.iterdir()):
            raise CheckpointError(
                f"{self.root} is not empty: resume the checkpoint there (EncryptedSession.resume, "
                f"`privlearn he train --resume`) or name a new folder"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.server.folder.mkdir()
        self.client.create(ctx)
