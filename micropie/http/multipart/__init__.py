"""Streaming ``multipart/form-data`` uploads (needs the ``multipart`` package, >= 2.0).

Theory of operation
-------------------
A multipart request runs in an ordinary ``ConnectionScope`` (one cancel scope, no task) that
carries a ``MultipartForm``. The form owns ``receive()`` and a ``multipart.PushMultipartParser``
and is parsed *on demand*, in whichever task needs the next piece of it. There is no parser task.

*Pulling* is one step: ``receive()`` one body message (its deadline set just before and cleared
just after), count it against ``max_body_size``, feed it to the parser and dispatch the events:

* a text field is collected (counted against ``max_form_field_size`` across chunks), decoded
  once whole (so UTF-8 split between chunks survives) and appended to
  ``request.body_params[name]``;
* a file part is put in ``request.files[name]`` as soon as its headers are in, with an
  ``UploadStream`` as its ``content``; its data is appended to that stream's buffer;
* the part and file counts are checked against ``max_multipart_parts``/``max_multipart_files``.

Who pulls: binding (``field(name)`` until the name arrived or the form ended, ``complete()``
for ``**kwargs`` and sub-app hand-off) and ``UploadStream.get()`` (it returns a buffered chunk
if there is one, else pulls until its own stream has data or ended). One task pulls at a time:
a task that needs data while another pulls waits for that step to finish (an ``anyio.Event``,
made only when someone waits) and then looks again, pulling itself if it still needs to. Every
step ends in progress, the end of the form or a released flag (a cancelled puller releases it
and wakes the others), so reading several files in any order, from several tasks, cannot
deadlock.

Why no parser task: a task that owns ``receive()`` and hands each chunk to the handler's task
pays a hand-off, a wake-up and a checkpoint per chunk (as much again as parsing the chunk), and
per request a task group, a task and its cancellation (more than parsing a whole MiB; the
figures are in benchmarks/README.md, "Multipart"). Pulling in the reader's own task costs a
function call per chunk and nothing per request. It also gives backpressure for free: while
nobody pulls, nothing is read, the server stops reading the socket and the client waits.

Spill: data for a part nobody is reading is kept in memory while someone pulls for a later
part (binding a field that follows an unread file, or reading files out of order). That is the
price of never deadlocking; it is bounded by ``max_body_size`` (which counts the whole body),
so keep that limit when uploads are large and handlers read out of order.

Checkpoints: ``receive()`` may return without yielding (in-process, or a server with messages
queued), and a checkpoint per chunk would cost a good part of what parsing the chunk does. A
step yields once the messages read since the last checkpoint add up to ``CHECKPOINT_EVERY``
(each counts its size plus ``MESSAGE_COST``, so a flood of tiny messages yields too): a client
that never stops sending cannot starve the event loop, and a handler drains 4 MiB at most
between two yields.

Deadlines: ``body_timeout`` applies to each ``receive()`` only while it is pending, through the
connection's body deadline (the app-wide sweeper, or the scope's own deadline without lifespan):
a handler that is slow to read is never timed out. A stall cancels the request's scope (as for
any body) and is answered with 408; the open file is failed with that ``HTTPError(408)``.

Failures (too large → 413, malformed → 400, stalled → 408, client gone) are recorded once and
end the form. An open (incomplete) file's ``get()`` then raises ``MultipartFileError`` whose
``cause`` is the failure (a cut upload never looks complete), binding raises the ``HTTPError``
(so the handler does not run), and when the user code ends the failure replaces its answer, also
when the handler let ``MultipartFileError`` escape. A client that leaves mid-upload: the reader
gets ``MultipartFileError``, nothing is sent, and the request's scope is cancelled
``ABANDONED_UPLOAD_GRACE`` seconds later (a deadline on the scope, no task), so a handler that
ignores it cannot keep running. Once the body is in, the scope watches for the client leaving
as for any request.

When the user code ends (the handler returned, or middleware answered early), the form stops:
the open file fails with ``RuntimeError("Multipart parser stopped")`` and nothing more is read.
Read an upload in the handler, not in a streamed response that runs after it.

Limitations: while nobody pulls (a handler that does not read its file), nobody reads
``receive()``, so a client that leaves is noticed only when the handler reads on or returns
(servers queue the disconnect behind the unread body).

``request.files[name]["filename"]`` is whatever the client sent (``../../etc/passwd``, or with
CR/LF decoded from ``%0D%0A``): never use it as a path or header value without cleaning it.

The package: ``_form`` holds ``MultipartForm`` (pulling, limits, failures) and ``open_form``,
``_upload`` the ``UploadStream`` a file part is read through, ``_boundary`` the ``Content-Type``
boundary parser.
"""

from micropie.http.multipart._boundary import MAX_BOUNDARY_LENGTH as MAX_BOUNDARY_LENGTH
from micropie.http.multipart._boundary import parse_boundary
from micropie.http.multipart._form import (
    ABANDONED_UPLOAD_GRACE,
    CHECKPOINT_EVERY,
    MULTIPART_INSTALLED,
    MultipartForm,
    MultipartLimits,
    open_form,
)
from micropie.http.multipart._form import MESSAGE_COST as MESSAGE_COST
from micropie.http.multipart._upload import UploadStream

__all__ = [
    "ABANDONED_UPLOAD_GRACE",
    "CHECKPOINT_EVERY",
    "MULTIPART_INSTALLED",
    "MultipartForm",
    "MultipartLimits",
    "UploadStream",
    "open_form",
    "parse_boundary",
]
