import numpy as np

from coperception.viz.bev import AGENT_COLOURS, GT_COLOUR, PRED_COLOUR, View, render_bev


def test_points_and_boxes_land_where_they_should():
    view = View(x_range=(-10, 10), y_range=(-5, 5), resolution=0.1)
    ego = np.array([[1.05, 2.05, 0.0, 1.0]])            # x right, y up in the picture
    other = np.array([[-5.05, -3.05, 0.0, 1.0]])
    img = np.asarray(render_bev([ego, other], view=view))
    assert img.shape == (100, 200, 3)
    assert tuple(img[29, 110]) == tuple(AGENT_COLOURS[0])   # row = (5 - 2.05)/0.1, col = (1.05 + 10)/0.1
    assert tuple(img[80, 49]) == tuple(AGENT_COLOURS[1])
    boxed = np.asarray(render_bev([], gt_boxes=np.array([[0, 0, 0, 4, 2, 1.5, 0.0]]),
                                  pred_boxes=np.array([[5, 0, 0, 4, 2, 1.5, np.pi / 2]]), view=view))
    assert tuple(boxed[60, 100]) == GT_COLOUR            # lower long edge (y = -1) at x = 0
    assert tuple(boxed[50, 100]) == (0, 0, 0)            # box interior stays empty
    assert tuple(boxed[50, 160]) == PRED_COLOUR          # rotated box: edge at x = 5 + 1 -> col 160
