"""The Streamlit app of lenskit (``streamlit run app.py``): pages, widgets and state only.

The app builds requests (:mod:`lenskit.requests`), runs them with :func:`lenskit.run` and
draws the results with :mod:`lenskit.charts`; it holds no maths and no rules of its own.

* :mod:`~lenskit.ui.state`: widget keys and the typed session state (:class:`AppState`).
* :mod:`~lenskit.ui.cached`: the process's model pool and the results cached by request.
* :mod:`~lenskit.ui.runner`: running a job with progress, and the record of an interrupted run.
* :mod:`~lenskit.ui.jobs`: the dataset page's runs and the lens trainings in a background
  thread (no Streamlit calls there; a fragment polls their progress).
* :mod:`~lenskit.ui.lenses`: what each lens choice loads, and its fidelity's held-out data;
  :mod:`~lenskit.ui.lens_panel`: the lens choice in the sidebar, the Train button, the
  fidelity panel.
* :mod:`~lenskit.ui.shell`: what every page shares (the sidebar and the lens run it asks for).
* :mod:`~lenskit.ui.sidebar`, :mod:`~lenskit.ui.examples`: the form and its examples.
* :mod:`~lenskit.ui.pages`: one module per page.
* :mod:`~lenskit.ui.text`, :mod:`~lenskit.ui.widgets`, :mod:`~lenskit.ui.downloads`: shared
  pieces (safe text, chart keys, the position selector, download buttons).

User text is only ever shown through ``st.code``, ``st.dataframe``, chart text marks or
escaped markdown: never as HTML.
"""
