"""``purr app``: a local web page for sampling and editing with a trained generator, and the plain logic behind it.

:mod:`purrception.app.core` holds everything the page does that is not the page: reading the form's values into
pipeline arguments (with the refusals the page shows), the ``purr sample`` command that reproduces a result, the
images of the grid, the entropy maps and the top-``k`` strip, and the downloadable archive; and for the Edit tab
the form, the inpainting run, its ``purr edit`` command and a completion's entropy maps along its editing
trajectory. It needs neither a browser nor gradio. :mod:`purrception.app.page` is the thin Gradio layer over it;
only ``purr app`` imports it, so the rest of the library never imports gradio (the optional ``[app]`` extra).
"""

from purrception.app.core import (
                                  AppSession,
                                  EditRequest,
                                  EditSource,
                                  Generation,
                                  Inspection,
                                  Limits,
                                  SampleRequest,
                                  parse_edit_form,
                                  parse_form,
                                  pixel_to_position,
)

__all__ = ["AppSession", "EditRequest", "EditSource", "Generation", "Inspection", "Limits", "SampleRequest",
           "parse_edit_form", "parse_form", "pixel_to_position"]
