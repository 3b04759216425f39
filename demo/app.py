"""The Gradio page: ``build_app(demo)`` wires ``demo.handlers`` to components; ``launch`` applies
the safe defaults (127.0.0.1, no share link, no folder served: only the pictures the page writes,
upload limit, optional throttled login). Importing ``demo`` first switches Gradio analytics off
(``demo/__init__.py``)."""

from __future__ import annotations

import gradio as gr

from demo import catalog, handlers, security
from demo.handlers import Demo
from demo.models import ENHANCE_KINDS
from demo.security import UploadError

GUIDE = """# Fundus image comparison
Pick an **evaluated test image** (left) or **upload a fundus photograph**, choose the task and the
training modes, then compare. Every image is sent losslessly (PNG) and enlarged by whole pixels
only, so what you see is what the model produced. Click the target image under *Zoom* to inspect
vessels or the optic disc: the same region is cut from every panel."""
# Result galleries grow with their rows instead of scrolling inside Gradio's fixed 550 px box:
# a clinician should see every panel at once.
CSS = """
#panels .grid-wrap, #zoomed .grid-wrap, #errmaps .grid-wrap {height: auto !important;
  min-height: 0 !important; max-height: none !important; overflow: visible !important}
#panels .gallery-container, #zoomed .gallery-container, #errmaps .gallery-container {
  height: auto !important; min-height: 0 !important}
#status {min-height: 1.5em}
#banner {background: #fff4d6; border: 1px solid #d9a400; border-radius: 6px; padding: 4px 10px}
"""
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
  function fix() {
    for (const img of document.querySelectorAll("img")) {
      if (!img.getAttribute("alt")) img.setAttribute("alt", describe(img));
    }
  }
  new MutationObserver(fix).observe(document.documentElement,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["src", "alt"]});
})();
</script>
"""


def _task_choices() -> list[tuple[str, str]]:
    return [(name, key) for key, name in catalog.TASKS.items() if key in ("sr4", "enhance")]


def mode_choices(demo: Demo, task: str) -> list[tuple[str, str]]:
    """(readable name, label) of the modes for ``task``; on enhancement the upscaling baselines
    are the unchanged input, so only one of them is offered (identity if present); on SR the
    identity baseline is a bicubic resize, so bicubic stands for it."""
    labels = list(demo.modes)
    if task == "enhance":
        same = [lb for lb in ("identity", "bicubic", "lanczos") if lb in labels]
        labels = [lb for lb in labels if lb not in same[1:]]
    elif "bicubic" in labels:              # identity on SR is a bicubic resize: offer bicubic
        labels = [lb for lb in labels if lb != "identity"]
    return [(catalog.display_name(lb, task), lb) for lb in labels]


def mode_help(demo: Demo, task: str) -> str:
    return "\n".join(f"- **{name}**: {catalog.description(label, task)}"
                     for name, label in mode_choices(demo, task))


def default_modes(demo: Demo, task: str) -> list[str]:
    offered = {lb for _, lb in mode_choices(demo, task)}
    return [lb for lb in catalog.default_selection(demo.modes) if lb in offered]


def slider_label(left: str, right: str) -> str:
    return f"Before / after: {left} (left) and {right} (right); drag the handle"


def build_app(demo: Demo, *, login: bool = False) -> gr.Blocks:
    """The page for ``demo``; ``login``: show a logout link (the server requires a login)."""
    png = handlers.imaging.PngStore()
    bar_png = png(handlers.imaging.colour_bar(*handlers.ERROR_SCALE))

    def files(items):
        return [(png(img), caption) for img, caption in items]

    def plot_files(plots):
        return [(png(handlers.imaging.to_uint8(handlers.imaging.load_rgb(path))), cap)
                for path, cap in plots]

    thumbs, ids = handlers.gallery_items(demo, "sr4")
    thumbs = files(thumbs)
    with gr.Blocks(title="medq-bench: fundus comparison") as app:
        with gr.Row():
            gr.Markdown(handlers.BANNER, elem_id="banner")
            if login:
                gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout")
        gr.Markdown(GUIDE)
        state = gr.State(None)
        gallery_ids = gr.State(ids)
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    task = gr.Radio(_task_choices(), value="sr4", label="Task")
                    chosen = gr.CheckboxGroup(mode_choices(demo, "sr4"),
                                              value=default_modes(demo, "sr4"),
                                              label="Modes to compare", elem_id="modes")
                    helptext = gr.Markdown(mode_help(demo, "sr4"), elem_id="mode-help")
                    kind = gr.Dropdown(list(ENHANCE_KINDS), value="blur", visible=False,
                                       label="Enhancement of an upload: what to correct",
                                       elem_id="enhance-kind")
                    test_gallery = gr.Gallery(thumbs, label="Evaluated test images: click one",
                                              columns=2, height=320, allow_preview=False,
                                              format="png", elem_id="test-gallery")
                    sample_id = gr.Textbox(label="Selected test image", interactive=False)
                    upload = gr.File(label="... or upload a fundus photograph (PNG, JPEG, TIFF)",
                                     file_types=["image", ".tif", ".tiff"], type="filepath",
                                     elem_id="upload")
                    compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
                    status = gr.Markdown(elem_id="status")
                with gr.Column(scale=4):
                    panel_gallery = gr.Gallery(label="Side by side: input, each mode's output, "
                                                     "target", columns=3, object_fit="contain",
                                               format="png", elem_id="panels", allow_preview=True)
                    metrics = gr.Dataframe(label="Per-image metrics (the leaderboard's "
                                                 "definitions (medq.metrics): PSNR, SSIM = "
                                                 "scikit-image's, data range 1; SSIM FOV averages "
                                                 "the windows inside the field of view)",
                                           interactive=False, elem_id="metrics", wrap=True)
                    reports = gr.Markdown(elem_id="reports")
                    with gr.Row():
                        with gr.Column(scale=1, min_width=260):
                            overview = gr.Image(label="Zoom: click on the target to move the box",
                                                format="png", interactive=False, height=300,
                                                elem_id="overview")
                            cx = gr.Slider(0, 1, value=0.5, step=0.01, label="Box centre x")
                            cy = gr.Slider(0, 1, value=0.5, step=0.01, label="Box centre y")
                            zf = gr.Slider(1, 16, value=4, step=1, label="Zoom factor")
                        with gr.Column(scale=3):
                            zoomed = gr.Gallery(label="Same region of every panel "
                                                      "(nearest-neighbour)", columns=3,
                                                format="png", elem_id="zoomed",
                                                object_fit="contain")
                            box_note = gr.Markdown(elem_id="box-note")
                    with gr.Row():
                        left = gr.Dropdown([], label="Slider: left image")
                        right = gr.Dropdown([], label="Slider: right image")
                    slider = gr.ImageSlider(label="Before / after: drag the handle", format="png",
                                            type="filepath", max_height=512, elem_id="slider")
                    position = gr.Slider(0, 100, value=50, step=5, elem_id="slider-position",
                                         label="Before / after position (keyboard: Tab here, "
                                               "then the arrow keys)")
                    errmaps = gr.Gallery(label="SSIM error maps: 1 - SSIM on one fixed scale, 0 "
                                               "(black) to 1 (yellow-white); dimmed outside the "
                                               "field of view", columns=3, format="png",
                                         elem_id="errmaps")
                    gr.Image(bar_png, label="Colour scale of every error map (fixed, 0 to 1)",
                             interactive=False, show_label=True, height=90, format="png",
                             elem_id="colour-bar", buttons=[])
        with gr.Tab("Results (leaderboard)"):
            reload_btn = gr.Button("Reload the leaderboard")
            table0, md0, plots0 = handlers.leaderboard(demo.reports)
            board = gr.Dataframe(table0, label="Leaderboard: main metric first, 95 % intervals in "
                                               "brackets", interactive=False, wrap=True,
                                 elem_id="leaderboard")
            board_md = gr.Markdown(md0)
            plots = gr.Gallery(plot_files(plots0), label="Plots", columns=2, height="auto",
                               format="png", elem_id="plots")

        # --- events -----------------------------------------------------------------------
        def on_task(task_value, upload_path):
            t, i = handlers.gallery_items(demo, task_value)
            return (files(t), i, "", gr.CheckboxGroup(choices=mode_choices(demo, task_value),
                                                      value=default_modes(demo, task_value)),
                    mode_help(demo, task_value),
                    gr.Dropdown(visible=bool(upload_path) and task_value == "enhance"))

        task.change(on_task, [task, upload],
                    [test_gallery, gallery_ids, sample_id, chosen, helptext, kind], api_name=False)

        def on_pick(current_ids, evt: gr.SelectData):
            return current_ids[evt.index], None, gr.Dropdown(visible=False)

        outputs = [state, panel_gallery, metrics, reports, overview, zoomed, box_note, left, right,
                   slider, errmaps, status]

        def cleared(message: str):
            """Every output emptied and the message in the status line, where it stays until
            the next action (a pop-up would vanish and leave 'Error' badges behind)."""
            return (None, [], None, "", None, [], "", gr.Dropdown([], value=None),
                    gr.Dropdown([], value=None), None, [], f"\u26a0\ufe0f **{message}**")

        def on_compare(upload_path, sid, task_value, labels, x, y, z, enhance_kind,
                       progress=gr.Progress()):
            try:
                cmp = handlers.compare(demo, task_value, labels or [], sample_id=sid or None,
                                       upload=upload_path or None, enhance_kind=enhance_kind,
                                       progress=lambda f, d: progress(f, desc=d))
            except (UploadError, ValueError) as e:
                return cleared(str(e))
            over, crops = handlers.zoom(cmp, x, y, z)
            names = handlers.view_names(cmp)
            lv, rv = (names[1] if len(names) > 2 else names[0]), names[-1]
            maps, _ = handlers.error_maps(cmp)
            cols = handlers.gallery_columns(len(names))
            rows = -(-len(names) // cols)
            map_cols = handlers.gallery_columns(len(maps))
            problems = handlers.undecodable_warnings(cmp) + [
                f"{handlers.mode_name(cmp, lb)} could not run: {msg}"
                for lb, msg in cmp["errors"].items()]
            text = (f"Showing **{cmp['title']}**, task {catalog.TASKS[cmp['task']]}."
                    + "".join(f"  \n\u26a0\ufe0f {p}" for p in problems))
            return (cmp, gr.Gallery(files(handlers.panels(cmp)), columns=cols, rows=rows),
                    handlers.metrics_table(cmp), handlers.reports_markdown(cmp), png(over),
                    gr.Gallery(files(crops), columns=cols, rows=rows),
                    handlers.zoom_box_text(cmp, x, y, z),
                    gr.Dropdown(names, value=lv), gr.Dropdown(names, value=rv),
                    gr.ImageSlider(tuple(map(png, handlers.slider_pair(cmp, lv, rv))),
                                   label=slider_label(lv, rv)),
                    gr.Gallery(files(maps), columns=map_cols, rows=-(-len(maps) // map_cols)),
                    text)

        inputs = [upload, sample_id, task, chosen, cx, cy, zf, kind]
        compare_btn.click(on_compare, inputs, outputs, api_name="compare")
        test_gallery.select(on_pick, [gallery_ids], [sample_id, upload, kind],
                            api_name=False).then(on_compare, inputs, outputs, api_name=False)

        def on_upload(task_value):
            return "", gr.Dropdown(visible=task_value == "enhance")

        upload.upload(on_upload, [task], [sample_id, kind], api_name=False).then(
            on_compare, inputs, outputs, api_name=False)
        upload.clear(lambda: gr.Dropdown(visible=False), None, [kind], api_name=False)

        def on_zoom(cmp, x, y, z):
            if cmp is None:
                return None, [], ""
            over, crops = handlers.zoom(cmp, x, y, z)
            return png(over), files(crops), handlers.zoom_box_text(cmp, x, y, z)

        for s in (cx, cy, zf):
            s.release(on_zoom, [state, cx, cy, zf], [overview, zoomed, box_note], api_name=False)

        def on_click(cmp, z, evt: gr.SelectData):
            if cmp is None:
                return 0.5, 0.5, None, [], ""
            f = handlers.imaging.display_factor(cmp["target"].shape[0])
            shape = tuple(s * f for s in cmp["target"].shape[:2])
            x, y = handlers.click_to_centre(cmp, evt.index, shape)
            over, crops = handlers.zoom(cmp, x, y, z)
            return (round(x, 2), round(y, 2), png(over), files(crops),
                    handlers.zoom_box_text(cmp, x, y, z))

        overview.select(on_click, [state, zf], [cx, cy, overview, zoomed, box_note],
                        api_name=False)

        def on_slider(cmp, lv, rv):
            if cmp is None or not lv or not rv:
                return None
            return gr.ImageSlider(tuple(map(png, handlers.slider_pair(cmp, lv, rv))),
                                  label=slider_label(lv, rv))

        left.change(on_slider, [state, left, right], [slider], api_name=False)
        right.change(on_slider, [state, left, right], [slider], api_name=False)
        position.change(lambda v: gr.ImageSlider(slider_position=v), [position], [slider],
                        api_name=False, show_progress="hidden")

        def on_reload():
            t, m, p = handlers.leaderboard(demo.reports)
            return t, m, plot_files(p)

        reload_btn.click(on_reload, None, [board, board_md, plots], api_name="leaderboard")
    return app


def launch(app: gr.Blocks, demo: Demo, *, host: str = "127.0.0.1", port: int | None = 7860,
           auth=None, prevent_thread_lock: bool = False, quiet: bool = False):
    """Start the server with the safe defaults; returns what ``Blocks.launch`` returns.
    ``auth``: user:password pairs (``security.auth_from_env``), checked through a
    ``security.LoginThrottle``; None: no login."""
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False,
        auth=security.LoginThrottle(auth) if auth else None,
        max_file_size=security.MAX_UPLOAD,
        # No folder is served: only the PNGs the page writes (handed to Gradio's cache).
        allowed_paths=[], blocked_paths=security.blocked_folders(demo.runs, demo.reports),
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True,
        inbrowser=False, theme=gr.themes.Default(), css=CSS, head=ALT_TEXT_JS,
        footer_links=["api", "settings"],
        # Run history can be sent to a Hugging Face bucket from its page: off for patient images.
        run_history=False)
