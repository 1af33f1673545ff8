# Installs spade into a temporary prefix and builds + runs tests/consumer against it.
# Invoked by CTest: cmake -DSRC=<source dir> -DWORK=<scratch dir> -P run.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
function(step)
    execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "step failed (${rc}): ${ARGV}\n${out}\n${err}")
    endif()
endfunction()
step(${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/spade-build -DSPADE_BUILD_TESTS=OFF -DSPADE_BUILD_BENCHMARKS=OFF
     -DSPADE_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
step(${CMAKE_COMMAND} --install ${WORK}/spade-build)
step(${CMAKE_COMMAND} -S ${SRC}/tests/consumer -B ${WORK}/consumer-build -DCMAKE_PREFIX_PATH=${WORK}/prefix
     -DCMAKE_BUILD_TYPE=Release)
step(${CMAKE_COMMAND} --build ${WORK}/consumer-build)
step(${WORK}/consumer-build/consumer)
message(STATUS "consumer built and ran against ${WORK}/prefix")
