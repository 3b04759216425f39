"""The Gradio page: ``build_app(demo)`` wires ``demo.handlers`` to components; ``launch`` applies
the safe defaults (127.0.0.1, no share link, no folder served: only the pictures the page writes,
upload limit, optional throttled login). Importing ``demo`` first switches Gradio analytics off
(``demo/__init__.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from demo import catalog, handlers, hygiene, security
from demo.handlers import Demo
from demo.models import ENHANCE_KINDS
from demo.security import UploadError

GUIDE = ("Upload a photograph or pick a test image, then **Compare**. An upload is worked at its "
         f"own size (up to {handlers.MAX_OWN_SIDE} px), a test image at the models' working size; "
         "the zoom shows native pixels.")
# Result galleries grow with their rows instead of scrolling inside Gradio's fixed 550 px box (a
# clinician should see every panel at once); captions wrap instead of being cut off, so a panel
# is never narrower than its caption needs; plots are shown whole. Zoomed views are shown at
# exactly their own size (each ``handlers.ZOOM_VIEW`` px or less): the browser neither shrinks them
# to fit nor stretches them, so one image pixel is one screen pixel at zoom factor 1.
CSS = """
#panels .grid-wrap, #zoomed .grid-wrap, #errmaps .grid-wrap, #plots .grid-wrap {
  height: auto !important; min-height: 0 !important; max-height: none !important;
  overflow: visible !important}
#panels .gallery-container, #zoomed .gallery-container, #errmaps .gallery-container,
#plots .gallery-container {height: auto !important; min-height: 0 !important}
#panels .caption-label, #zoomed .caption-label, #errmaps .caption-label {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
  max-width: none !important; position: static !important}
#panels .thumbnail-item, #zoomed .thumbnail-item, #errmaps .thumbnail-item {min-width: 220px;
  height: auto !important; aspect-ratio: auto !important; display: flex !important;
  flex-direction: column !important; overflow: visible !important}
#panels .thumbnail-item img, #errmaps .thumbnail-item img {
  aspect-ratio: 1 / 1; width: 100%; height: auto !important}
#plots img {object-fit: contain !important}
#zoomed .grid-container {grid-template-columns: repeat(auto-fill, minmax({zoom_view}px,
  max-content)) !important; grid-template-rows: none !important; grid-auto-rows: auto !important;
  gap: 8px !important}
#zoomed .grid-wrap {padding-top: 2.4em !important}
#zoomed .thumbnail-item {min-width: 0 !important; width: max-content !important}
#zoomed .thumbnail-item img {width: auto !important; height: auto !important;
  max-width: none !important; max-height: none !important; object-fit: none !important;
  aspect-ratio: auto !important; border-radius: 0 !important; image-rendering: pixelated}
#pan button {min-width: 0 !important}
#test-gallery .grid-container {grid-template-columns: repeat(auto-fill, 112px) !important}
#test-gallery .thumbnail-item {width: 112px; height: 112px}
#status {min-height: 1.5em}
.toast-wrap, .toast-body {display: none !important}
#banner {background: #fff4d6; border: 1px solid #d9a400; border-radius: 6px; padding: 2px 10px}
#banner p {margin: 0}
#upload {min-height: 0}
""".replace("{zoom_view}", str(handlers.ZOOM_VIEW))
# Gradio leaves ``alt`` empty on gallery thumbnails and slider images. Every image gets one: what
# the image is (by the component it sits in) and its caption. Re-applied whenever Gradio redraws.
ALT_TEXT_JS = """
<script>
(() => {
  const WHAT = {"panels": "side-by-side panel", "zoomed": "zoomed region of panel",
    "errmaps": "SSIM error map", "test-gallery": "evaluated test image",
    "overview": "target image with the zoom box", "slider": "before/after slider image",
    "colour-bar": "colour bar of the error maps, 1 - SSIM from 0 to 1",
    "plots": "leaderboard plot"};
  function describe(img) {
    let what = null;
    for (let el = img; el; el = el.parentElement) {
      if (el.id && WHAT[el.id]) { what = WHAT[el.id]; break; }
    }
    const item = img.closest("button, figure, .thumbnail-item, .gallery-item");
    const cap = (item && item.querySelector(".caption-label, figcaption, .caption")) || null;
    const caption = (cap && cap.textContent.trim()) || img.getAttribute("title") || "";
    const block = img.closest(".block");
    const label = block && block.querySelector("[data-testid='block-label'], .label-text");
    const text = label && label.textContent.trim();
    if (what && text && what.startsWith("before/after")) what += " (" + text + ")";
    return [what || text || "image", caption].filter(Boolean).join(": ");
  }
  // Gradio's own pop-ups (a file over the size limit, a lost connection) vanish after a few
  // seconds: they are hidden (CSS) and their text is written into the status line instead, where
  // it stays until the next action.
  const shown = new WeakSet();
  function toStatus() {
    for (const toast of document.querySelectorAll(".toast-body")) {
      if (shown.has(toast)) continue;
      shown.add(toast);
      const text = (toast.querySelector(".toast-text") || toast).textContent.trim();
      const status = document.querySelector("#status .prose") || document.querySelector("#status");
      if (!status || !text) continue;
      const p = document.createElement("p"), b = document.createElement("strong");
      b.textContent = "\u26a0\ufe0f " + text;
      p.appendChild(b);
      status.replaceChildren(p);
    }
  }
  function fix() {
    for (const img of document.querySelectorAll("img")) {
      if (!img.getAttribute("alt")) img.setAttribute("alt", describe(img));
    }
    toStatus();
  }
  new MutationObserver(fix).observe(document.documentElement,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["src", "alt"]});
})();
</script>
"""


def _task_choices() -> list[tuple[str, str]]:
    return [(name, key) for key, name in catalog.TASKS.items() if key in ("sr4", "enhance")]


def mode_choices(demo: Demo, task: str, *, upload: bool = False) -> list[tuple[str, str]]:
    """(readable name, label) of the modes for ``task``; on enhancement the upscaling baselines
    are the unchanged input, so only one of them is offered (identity if present); on SR the
    identity baseline is a bicubic resize, so bicubic stands for it. ``upload``: only the modes
    the page can run on an uploaded photograph (``catalog.runs_on_uploads``)."""
    labels = list(demo.modes)
    if task == "enhance":
        same = [lb for lb in ("identity", "bicubic", "lanczos") if lb in labels]
        labels = [lb for lb in labels if lb not in same[1:]]
    elif "bicubic" in labels:              # identity on SR is a bicubic resize: offer bicubic
        labels = [lb for lb in labels if lb != "identity"]
    if upload:
        labels = [lb for lb in labels if catalog.runs_on_uploads(demo.modes[lb], demo.modes)]
    return [(catalog.display_name(lb, task), lb) for lb in labels]


def mode_help(demo: Demo, task: str) -> str:
    return "\n".join(f"- **{name}**: {catalog.description(label, task)}"
                     for name, label in mode_choices(demo, task))


def default_modes(demo: Demo, task: str, *, upload: bool = False) -> list[str]:
    return catalog.default_selection([lb for _, lb in mode_choices(demo, task, upload=upload)],
                                     task)


def modes_update(demo: Demo, task: str, current: list[str] | None, upload: bool):
    """The mode checkboxes for ``task`` with or without an upload: the ticked ones kept where
    they are still offered, the defaults when none is."""
    choices = mode_choices(demo, task, upload=upload)
    offered = {lb for _, lb in choices}
    kept = [lb for lb in current or [] if lb in offered]
    return gr.CheckboxGroup(choices=choices, value=kept or default_modes(demo, task,
                                                                         upload=upload))


PAN_BUTTONS = {"left": "\u2190 Left", "up": "\u2191 Up", "down": "\u2193 Down",
               "right": "\u2192 Right"}
"""The zoom box's pan buttons; each moves it by half its side (``handlers.pan``)."""
PAN_STEPS = {"left": (-1, 0), "up": (0, -1), "down": (0, 1), "right": (1, 0)}


def slider_label(left: str, right: str) -> str:
    return f"Before / after: {left} (left) and {right} (right); drag the handle"


class Page(gr.Blocks):
    """``gr.Blocks`` whose login-page message is computed per request: the policy given to
    ``launch(auth_message=...)`` plus, for a browser whose user name is locked out, that it is
    locked and for how long (``security.LockNotice`` sets it for the request)."""

    @property
    def auth_message(self):
        return security.login_message(getattr(self, "_auth_policy", None))

    @auth_message.setter
    def auth_message(self, value):
        self._auth_policy = value


def build_app(demo: Demo, *, login: bool = False) -> gr.Blocks:
    """The page for ``demo``; ``login``: show a logout link (the server requires a login)."""
    root = hygiene.temp_root()          # before any component: Gradio's uploads go there too
    sessions = hygiene.Sessions(Path(tempfile.mkdtemp(prefix="page-", dir=root)))
    shared = handlers.imaging.PngStore(sessions.root / "shared")
    bar_png = shared(handlers.imaging.colour_bar(*handlers.ERROR_SCALE))

    def files(items, session):
        png = handlers.imaging.PngStore(sessions.folder(session))
        return [(png(img), caption) for img, caption in items]

    def results_view():
        text, board_files, plots = handlers.results(demo.reports, demo.real_reports)
        copies = [shared.copy(f) for f in board_files]
        return text, copies or None, [(shared(handlers.imaging.to_uint8(
            handlers.imaging.load_rgb(path))), cap) for path, cap in plots]

    thumbs, ids = handlers.gallery_items(demo, "sr4")
    thumbs = [(shared(img), cap) for img, cap in thumbs]
    with Page(title="medq-bench: fundus comparison") as app:
        with gr.Row(elem_id="top"):
            gr.Markdown(handlers.BANNER, elem_id="banner")
            if login:
                gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout")
        gallery_ids = gr.State(ids)
        with gr.Tab("Compare"):
            with gr.Row(elem_id="toolbar"):
                with gr.Column(scale=3, min_width=260):
                    upload = gr.File(label="Upload a fundus photograph (PNG, JPEG, TIFF)",
                                     type="filepath", height=110, elem_id="upload")
                with gr.Column(scale=5, min_width=360):
                    task = gr.Radio(_task_choices(), value="sr4", label="Task", elem_id="task")
                    chosen = gr.CheckboxGroup(mode_choices(demo, "sr4"),
                                              value=default_modes(demo, "sr4"),
                                              label="Modes to compare", elem_id="modes")
                    with gr.Accordion("What each mode is", open=False, elem_id="mode-help-box"):
                        helptext = gr.Markdown(mode_help(demo, "sr4"), elem_id="mode-help")
                with gr.Column(scale=2, min_width=220):
                    compare_btn = gr.Button("Compare", variant="primary", size="lg",
                                            elem_id="compare")
                    kind = gr.Dropdown(list(ENHANCE_KINDS), value="blur", visible=False,
                                       label="Enhancement of an upload: what to correct",
                                       elem_id="enhance-kind")
                    status = gr.Markdown(GUIDE, elem_id="status")
            with gr.Accordion("... or pick an evaluated test image", open=True,
                              elem_id="test-images"):
                test_gallery = gr.Gallery(thumbs, show_label=False, columns=10, height=130,
                                          allow_preview=False, format="png",
                                          elem_id="test-gallery")
            sample_id = gr.Textbox(visible=False)
            panel_gallery = gr.Gallery(label="Side by side: input, each mode's output, target "
                                             "(scaled to fit; the zoom below shows native pixels)",
                                       columns=4, object_fit="contain", format="png",
                                       elem_id="panels", allow_preview=True)
            metrics = gr.Dataframe(label=METRICS_LABEL, interactive=False, elem_id="metrics",
                                   wrap=True)
            reports = gr.Markdown(elem_id="reports")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    overview = gr.Image(label="Zoom box (scaled to fit): click to move it",
                                        format="png", interactive=False, height=300,
                                        elem_id="overview")
                    with gr.Row(elem_id="pan"):
                        pans = {d: gr.Button(text, size="sm", min_width=40, elem_id=f"pan-{d}")
                                for d, text in PAN_BUTTONS.items()}
                    # Fine steps: a 1024-px image's box must land on any pixel.
                    cx = gr.Slider(0, 1, value=0.5, step=0.001, label="Box centre x")
                    cy = gr.Slider(0, 1, value=0.5, step=0.001, label="Box centre y")
                    zf = gr.Slider(*handlers.ZOOM_FACTORS, value=2, step=1, elem_id="zoom-factor",
                                   label="Zoom factor: 1 = native pixels (one image pixel per "
                                         "screen pixel), 2 = each pixel as 2x2, ...")
                with gr.Column(scale=3):
                    zoomed = gr.Gallery(label="Zoom: one region of every view at native pixels "
                                              "x the zoom factor (no browser scaling)",
                                        columns=4, format="png", elem_id="zoomed",
                                        allow_preview=False)
                    box_note = gr.Markdown(elem_id="box-note")
            with gr.Row():
                left = gr.Dropdown([], label="Slider: left image")
                right = gr.Dropdown([], label="Slider: right image")
            slider = gr.ImageSlider(label="Before / after: drag the handle", format="png",
                                    type="filepath", max_height=768, elem_id="slider")
            position = gr.Slider(0, 100, value=50, step=5, elem_id="slider-position",
                                 label="Before / after position (keyboard: Tab here, then the "
                                       "arrow keys)")
            errmaps = gr.Gallery(label="SSIM error maps (scaled to fit): 1 - SSIM on one fixed "
                                       "scale, 0 (black) to 1 (yellow-white); dimmed outside the "
                                       "field of view",
                                 columns=4, format="png", elem_id="errmaps")
            gr.Image(bar_png, label="Colour scale of every error map (fixed, 0 to 1)",
                     interactive=False, show_label=True, height=90, format="png",
                     elem_id="colour-bar", buttons=[])
        with gr.Tab("Results"):
            text0, files0, plots0 = results_view()
            reload_btn = gr.Button("Reload the results", size="sm", elem_id="reload")
            board = gr.Markdown(text0, elem_id="results")
            board_files = gr.File(files0, label="The full leaderboard (every mode and metric)",
                                  file_count="multiple", interactive=False,
                                  elem_id="leaderboard-files")
            plots = gr.Gallery(plots0, label="Plots", columns=1, height="auto",
                               object_fit="contain", format="png", elem_id="plots")
        _wire(demo, sessions, files, locals())
        reload_btn.click(results_view, None, [board, board_files, plots], api_name="leaderboard")

        def on_unload(request: gr.Request):
            """The browser session ended: its uploads and pictures are deleted now."""
            sessions.end(request.session_hash)
            hygiene.release_memory()

        app.unload(on_unload)
    return app


DROPPED = ("\u26a0\ufe0f This comparison is no longer kept on the server (the server keeps only "
           "the most recent ones): press **Compare** to see it again.")
METRICS_LABEL = ("Per-image metrics (the leaderboard's definitions, medq.metrics: PSNR, SSIM = "
                 "scikit-image's, data range 1; SSIM FOV averages the windows inside the field of "
                 "view). Identical: no pixel differs by more than 1/255, or SSIM >= 0.999")


def _wire(demo: Demo, sessions, files, c: dict) -> None:
    """The events of the Compare tab; ``c``: the components of ``build_app`` by name."""
    outputs = [c[k] for k in ("panel_gallery", "metrics", "reports", "overview", "zoomed",
                              "box_note", "left", "right", "slider", "errmaps", "status")]

    def cleared(message: str):
        """Every output emptied and the message in the status line, where it stays until
        the next action (a pop-up would vanish and leave 'Error' badges behind)."""
        return ([], None, "", None, [], "", gr.Dropdown([], value=None),
                gr.Dropdown([], value=None), None, [], f"\u26a0\ufe0f **{message}**")

    def on_task(task_value, upload_path, current):
        t, i = handlers.gallery_items(demo, task_value)
        png = handlers.imaging.PngStore(sessions.root / "shared")
        return ([(png(img), cap) for img, cap in t], i, "",
                modes_update(demo, task_value, current, bool(upload_path)),
                mode_help(demo, task_value),
                gr.Dropdown(visible=bool(upload_path) and task_value == "enhance"))

    c["task"].change(on_task, [c["task"], c["upload"], c["chosen"]],
                     [c["test_gallery"], c["gallery_ids"], c["sample_id"], c["chosen"],
                      c["helptext"], c["kind"]], api_name=False)

    def on_pick(current_ids, task_value, current, evt: gr.SelectData):
        return (current_ids[evt.index], None, gr.Dropdown(visible=False),
                modes_update(demo, task_value, current, False))

    def on_compare(upload_path, sid, task_value, labels, x, y, z, enhance_kind,
                   request: gr.Request, progress=gr.Progress()):
        session = request.session_hash if request is not None else None
        if upload_path:
            sessions.add_upload(session, upload_path)
        try:
            cmp = handlers.compare(demo, task_value, labels or [], sample_id=sid or None,
                                   upload=upload_path or None, enhance_kind=enhance_kind,
                                   progress=lambda f, d: progress(f, desc=d))
        except (UploadError, ValueError) as e:
            hygiene.release_memory()     # a refused photograph was decoded all the same
            return cleared(str(e))
        shown = _show(cmp, x, y, z, lambda items: files(items, session))
        sessions.remember(session, handlers.kept(cmp))   # for the zoom and slider, compact
        del cmp
        hygiene.release_memory()     # what the comparison freed, back to the system
        return shown

    inputs = [c[k] for k in ("upload", "sample_id", "task", "chosen", "cx", "cy", "zf", "kind")]
    c["compare_btn"].click(on_compare, inputs, outputs, api_name="compare")
    c["test_gallery"].select(on_pick, [c["gallery_ids"], c["task"], c["chosen"]],
                             [c["sample_id"], c["upload"], c["kind"], c["chosen"]],
                             api_name=False).then(on_compare, inputs, outputs, api_name=False)

    def on_upload(task_value, current):
        return ("", gr.Dropdown(visible=task_value == "enhance"),
                modes_update(demo, task_value, current, True))

    c["upload"].upload(on_upload, [c["task"], c["chosen"]],
                       [c["sample_id"], c["kind"], c["chosen"]], api_name=False).then(
        on_compare, inputs, outputs, api_name=False)
    c["upload"].clear(lambda task_value, current: (gr.Dropdown(visible=False), modes_update(
        demo, task_value, current, False)), [c["task"], c["chosen"]], [c["kind"], c["chosen"]],
        api_name=False)

    _wire_zoom(sessions, files, c)
    _wire_slider(sessions, files, c)


def _wire_zoom(sessions, files, c: dict) -> None:
    """The zoom's events: the centre and factor sliders, the pan buttons, a click on the
    overview; each redraws the overview, the native-pixel crops and the note under them."""
    def on_zoom(x, y, z, request: gr.Request):
        cmp = sessions.comparison(request.session_hash)
        if cmp is None:
            return None, [], (DROPPED if sessions.dropped(request.session_hash) else "")
        over, crops = handlers.zoom(cmp, x, y, z)
        shown = files([(over, ""), *crops], request.session_hash)
        return shown[0][0], shown[1:], handlers.zoom_box_text(cmp, x, y, z)

    # On change, not release: a value typed into a slider's box counts too (release is only the
    # mouse); while one zoom is drawn, only the latest further change waits (always_last).
    for s in (c["cx"], c["cy"], c["zf"]):
        s.change(on_zoom, [c["cx"], c["cy"], c["zf"]],
                 [c["overview"], c["zoomed"], c["box_note"]], api_name=False,
                 trigger_mode="always_last", show_progress="hidden")

    def panner(direction: str):
        def on_pan(x, y, z, request: gr.Request):
            cmp = sessions.comparison(request.session_hash)
            if cmp is None:
                return (x, y, *on_zoom(x, y, z, request))
            x, y = handlers.pan(cmp, x, y, z, *PAN_STEPS[direction])
            return (x, y, *on_zoom(x, y, z, request))
        return on_pan

    for direction, button in c["pans"].items():
        button.click(panner(direction), [c["cx"], c["cy"], c["zf"]],
                     [c["cx"], c["cy"], c["overview"], c["zoomed"], c["box_note"]],
                     api_name=False)

    def on_click(z, request: gr.Request, evt: gr.SelectData):
        cmp = sessions.comparison(request.session_hash)
        if cmp is None:
            return (0.5, 0.5, *on_zoom(0.5, 0.5, z, request))
        f = handlers.imaging.display_factor(cmp["target"].shape[0])
        shape = tuple(s * f for s in cmp["target"].shape[:2])
        x, y = (round(v, 4) for v in handlers.click_to_centre(cmp, evt.index, shape))
        return (x, y, *on_zoom(x, y, z, request))

    c["overview"].select(on_click, [c["zf"]],
                         [c["cx"], c["cy"], c["overview"], c["zoomed"], c["box_note"]],
                         api_name=False)


def _wire_slider(sessions, files, c: dict) -> None:
    """The before/after slider's events: either image chosen, or its position moved."""
    def on_slider(lv, rv, request: gr.Request):
        cmp = sessions.comparison(request.session_hash)
        if cmp is None or not lv or not rv:
            return None
        pair = files([(img, "") for img in handlers.slider_pair(cmp, lv, rv)],
                     request.session_hash)
        return gr.ImageSlider(tuple(p for p, _ in pair), label=slider_label(lv, rv))

    c["left"].change(on_slider, [c["left"], c["right"]], [c["slider"]], api_name=False)
    c["right"].change(on_slider, [c["left"], c["right"]], [c["slider"]], api_name=False)
    c["position"].change(lambda v: gr.ImageSlider(slider_position=v), [c["position"]],
                         [c["slider"]], api_name=False, show_progress="hidden")


def _show(cmp: dict, x: float, y: float, z: float, files):
    """The Compare outputs of a comparison (``files`` turns (image, caption) lists into served
    PNG paths)."""
    over, crops = handlers.zoom(cmp, x, y, z)
    names = handlers.view_names(cmp)
    lv, rv = (names[1] if len(names) > 2 else names[0]), names[-1]
    maps, _ = handlers.error_maps(cmp)
    cols = handlers.gallery_columns(len(names))
    map_cols = handlers.gallery_columns(len(maps))
    problems = handlers.undecodable_warnings(cmp) + [
        f"{handlers.mode_name(cmp, lb)}: {msg}" for lb, msg in cmp["errors"].items()]
    notice = handlers.ood_notice(cmp)
    text = (f"Showing **{cmp['title']}**, task {catalog.TASKS[cmp['task']]}."
            + "".join(f"  \n{line}" for line in cmp["notes"])
            + (f"  \n\u26a0\ufe0f {notice}" if notice else "")
            + "".join(f"  \n\u26a0\ufe0f {p}" for p in problems))
    pair = files([(img, "") for img in handlers.slider_pair(cmp, lv, rv)])
    return (gr.Gallery(files(handlers.panels(cmp)), columns=cols, rows=-(-len(names) // cols)),
            handlers.metrics_table(cmp), handlers.reports_markdown(cmp), files([(over, "")])[0][0],
            gr.Gallery(files(crops), columns=cols, rows=-(-len(names) // cols)),
            handlers.zoom_box_text(cmp, x, y, z),
            gr.Dropdown(names, value=lv), gr.Dropdown(names, value=rv),
            gr.ImageSlider(tuple(p for p, _ in pair), label=slider_label(lv, rv)),
            gr.Gallery(files(maps), columns=map_cols, rows=-(-len(maps) // map_cols)), text)


GRADIO_SESSIONS = 256
"""Browser sessions whose component state Gradio keeps (``launch(state_session_capacity=)``,
least recently used first out). Gradio keeps a session's state after its tab closes and by
default up to 10,000 sessions, each holding its own copy of the page's configuration and of
every component a handler returned; this page keeps nothing per session that must outlive far
fewer sessions (its comparisons: ``hygiene.Sessions``), so a smaller bound caps that memory too.
A session pushed out starts again from the page as first loaded."""


def launch(app: gr.Blocks, demo: Demo, *, host: str = "127.0.0.1", port: int | None = 7860,
           auth=None, prevent_thread_lock: bool = False, quiet: bool = False):
    """Start the server with the safe defaults; returns what ``Blocks.launch`` returns.
    ``auth``: user:password pairs (``security.auth_from_env``), checked through a
    ``security.LoginThrottle`` whose locked-out users are told so on the login page
    (``security.LockNotice``); None: no login."""
    from starlette.middleware import Middleware

    throttle = security.LoginThrottle(auth) if auth else None
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, auth=throttle,
        auth_message=security.LOGIN_POLICY if throttle else None,
        app_kwargs={"middleware": [Middleware(security.LockNotice, throttle=throttle)]}
        if throttle else None,
        max_file_size=security.MAX_UPLOAD, state_session_capacity=GRADIO_SESSIONS,
        # No folder is served: only the PNGs the page writes (in the page's own temp folder).
        allowed_paths=[], blocked_paths=security.blocked_folders(demo.runs, demo.reports),
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True,
        inbrowser=False, theme=gr.themes.Default(), css=CSS, head=ALT_TEXT_JS,
        footer_links=["api", "settings"],
        # Run history can be sent to a Hugging Face bucket from its page: off for patient images.
        run_history=False)
