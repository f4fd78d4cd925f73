"""Browser tests: register their marker (select with -m browser, skip with -m 'not browser')."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless chromium")
