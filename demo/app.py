"""The Gradio page: ``build_app(demo)`` wires ``demo.handlers`` to components; ``launch`` applies
the safe defaults (127.0.0.1, no share link, only runs/ and reports/ served, upload limit, optional
login). Importing ``demo`` first switches Gradio analytics off (``demo/__init__.py``)."""

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
"""


def _task_choices() -> list[tuple[str, str]]:
    return [(name, key) for key, name in catalog.TASKS.items() if key in ("sr4", "enhance")]


def build_app(demo: Demo) -> gr.Blocks:
    modes = list(demo.modes)
    png = handlers.imaging.PngStore()

    def files(items):
        return [(png(img), caption) for img, caption in items]

    thumbs, ids = handlers.gallery_items(demo, "sr4")
    thumbs = files(thumbs)
    with gr.Blocks(title="medq-bench: fundus comparison") as app:
        gr.Markdown(GUIDE)
        state = gr.State(None)
        gallery_ids = gr.State(ids)
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    task = gr.Radio(_task_choices(), value="sr4", label="Task")
                    chosen = gr.CheckboxGroup(modes, value=catalog.default_selection(demo.modes),
                                              label="Modes to compare (from runs/)")
                    kind = gr.Dropdown(list(ENHANCE_KINDS), value="blur",
                                       label="Enhancement: what to correct (models run now)")
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
                    panel_gallery = gr.Gallery(label="Side by side: input, each mode's output, target",
                                               columns=3, object_fit="contain", format="png",
                                               elem_id="panels", allow_preview=True)
                    metrics = gr.Dataframe(label="Per-image metrics (the leaderboard's definitions: "
                                                 "torchmetrics PSNR/SSIM, data range 1; FOV = inside "
                                                 "the field of view)", interactive=False, elem_id="metrics",
                                           wrap=True)
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
                            zoomed = gr.Gallery(label="Same region of every panel (nearest-neighbour)",
                                                columns=3, format="png", elem_id="zoomed",
                                                object_fit="contain")
                            box_note = gr.Markdown(elem_id="box-note")
                    with gr.Row():
                        left = gr.Dropdown([], label="Slider: left image")
                        right = gr.Dropdown([], label="Slider: right image")
                    slider = gr.ImageSlider(label="Before / after: drag the handle", format="png",
                                            type="numpy", max_height=512, elem_id="slider")
                    errmaps = gr.Gallery(label="SSIM error maps: 1 - SSIM (bright = structure "
                                               "lost; dimmed outside the field of view)",
                                         columns=3, format="png", elem_id="errmaps")
                    scale_note = gr.Markdown()
        with gr.Tab("Results (leaderboard)"):
            reload_btn = gr.Button("Reload reports/")
            table0, md0, plots0 = handlers.leaderboard(demo.reports)
            board = gr.Dataframe(table0, label="reports/leaderboard.csv", interactive=False,
                                 elem_id="leaderboard")
            board_md = gr.Markdown(md0)
            plots = gr.Gallery(plots0, label="reports/*.png", columns=2, height="auto",
                               format="png")

        # --- events -----------------------------------------------------------------------
        def on_task(task_value):
            t, i = handlers.gallery_items(demo, task_value)
            return files(t), i, ""

        task.change(on_task, [task], [test_gallery, gallery_ids, sample_id], api_name=False)

        def on_pick(current_ids, evt: gr.SelectData):
            return current_ids[evt.index], None

        outputs = [state, panel_gallery, metrics, reports, overview, zoomed, box_note, left, right,
                   slider, errmaps, scale_note, status]

        def on_compare(upload_path, sid, task_value, labels, x, y, z, enhance_kind,
                       progress=gr.Progress()):
            try:
                cmp = handlers.compare(demo, task_value, labels or [], sample_id=sid or None,
                                       upload=upload_path or None, enhance_kind=enhance_kind,
                                       progress=lambda f, d: progress(f, desc=d))
            except (UploadError, ValueError) as e:
                raise gr.Error(str(e)) from e
            for msg in handlers.undecodable_warnings(cmp):
                gr.Warning(msg)
            for label, msg in cmp["errors"].items():
                gr.Warning(f"{label} could not run: {msg}")
            over, crops = handlers.zoom(cmp, x, y, z)
            names = handlers.view_names(cmp)
            lv, rv = (names[1] if len(names) > 2 else names[0]), names[-1]
            maps, vmax = handlers.error_maps(cmp)
            cols = handlers.gallery_columns(len(names))
            rows = -(-len(names) // cols)
            map_cols = handlers.gallery_columns(len(maps))
            return (cmp, gr.Gallery(files(handlers.panels(cmp)), columns=cols, rows=rows),
                    handlers.metrics_table(cmp), handlers.reports_markdown(cmp), png(over),
                    gr.Gallery(files(crops), columns=cols, rows=rows),
                    handlers.zoom_box_text(cmp, x, y, z),
                    gr.Dropdown(names, value=lv), gr.Dropdown(names, value=rv),
                    tuple(map(png, handlers.slider_pair(cmp, lv, rv))),
                    gr.Gallery(files(maps), columns=map_cols, rows=-(-len(maps) // map_cols)),
                    f"Colour scale of the error maps: 0 (black, identical structure) to {vmax:.2f} "
                    "(yellow-white), shared by all maps.",
                    f"Showing **{cmp['title']}**, task {catalog.TASKS[cmp['task']]}. {cmp['note']}")

        inputs = [upload, sample_id, task, chosen, cx, cy, zf, kind]
        compare_btn.click(on_compare, inputs, outputs, api_name="compare")
        test_gallery.select(on_pick, [gallery_ids], [sample_id, upload], api_name=False).then(
            on_compare, inputs, outputs, api_name=False)
        upload.upload(lambda: "", None, [sample_id], api_name=False).then(
            on_compare, inputs, outputs, api_name=False)

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
            return tuple(map(png, handlers.slider_pair(cmp, lv, rv)))

        left.change(on_slider, [state, left, right], [slider], api_name=False)
        right.change(on_slider, [state, left, right], [slider], api_name=False)

        def on_reload():
            t, m, p = handlers.leaderboard(demo.reports)
            return t, m, p

        reload_btn.click(on_reload, None, [board, board_md, plots], api_name="leaderboard")
    return app


def launch(app: gr.Blocks, demo: Demo, *, host: str = "127.0.0.1", port: int | None = 7860,
           auth=None, prevent_thread_lock: bool = False, quiet: bool = False):
    """Start the server with the safe defaults; returns what ``Blocks.launch`` returns."""
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, auth=auth,
        max_file_size=security.MAX_UPLOAD,
        allowed_paths=security.served_folders(demo.runs, demo.reports),
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=True,
        inbrowser=False, theme=gr.themes.Default(), css=CSS, footer_links=["api", "settings"],
        # Run history can be sent to a Hugging Face bucket from its page: off for patient images.
        run_history=False)
