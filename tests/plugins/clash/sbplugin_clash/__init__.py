"""A second distribution offering a method under the name sbplugin-demo already provides."""

from sbplugin_demo import TopK as _DemoTopK


class TopK(_DemoTopK):
    description = "another top-k (plugin clash test)"
