"""BreastCMSL in the browser: a trame-slicer page over :class:`BreastCMSLLib.panel.session.Session`.

``breastcmsl-web`` (:mod:`.app`) runs a front server (:mod:`.front`: token, one process per browser tab,
proxied on one port); each tab process (:mod:`.tab`) holds its own MRML scene and session and serves the
page (:mod:`.page`) whose controls call session methods (:mod:`.controller`). The Lib never imports this.
"""
